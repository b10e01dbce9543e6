// Command kubelet-oracle answers, with kubelet's own code, which of a Pod's pull Secrets
// kubelet uses for an image. It is the oracle of the differential test
// tests/kubelet_oracle.rs; scripts/kubelet-oracle.sh builds it from the Go module proxy
// against the same k8s.io/kubernetes version as the test cluster.
//
//	kubelet-oracle lookup    JSON lines on stdin, one query each, one answer per line on stdout:
//	                         {"secrets":["<.dockerconfigjson>",...],"image":"..."}
//	                      -> {"name":"<what kubelet looks up>","used":[<indices of secrets>]}
//	                         or {"error":"<why kubelet refuses the image or the Secrets>","used":[]}
//	kubelet-oracle corpus    every string literal of the upstream tests (keyring_test.go and
//	                         distribution/reference's tests, read from the Go module cache the
//	                         oracle was built from), plus the keys of the JSON objects among
//	                         them, as JSON lines {"file":"...","literals":[...]}
//	kubelet-oracle version   the versions the oracle was built from
//
// The lookup follows kubelet's image manager (pkg/kubelet/images/image_manager.go) step by
// step: applyDefaultImageTag (unexported, so its three lines are repeated here with the same
// calls), then makeLookupPullCredentialsFunc: parsers.ParseImageName,
// secrets.MakeDockerKeyring over the Pod's pull Secrets, and Lookup of the repository name.
// The node's own keyring and credential provider plugins are left out (empty): only pull
// Secrets are in question. Which Secret a credential came from is read from its tracked
// source, as kubelet's KubeletEnsureSecretPulledImages feature records it.
package main

import (
	"bufio"
	_ "crypto/sha256" // as in kubelet: go-digest's sha256 and sha512 digests need the hashes linked
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/credentialprovider"
	credentialprovidersecrets "k8s.io/kubernetes/pkg/credentialprovider/secrets"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/util/parsers"
)

// Set by scripts/kubelet-oracle.sh (-ldflags -X): module versions and source directories.
var (
	kubernetesVersion string
	kubernetesDir     string
	referenceVersion  string
	referenceDir      string
)

type query struct {
	Secrets []string `json:"secrets"`
	Image   string   `json:"image"`
}

type answer struct {
	Name  string `json:"name,omitempty"`
	Error string `json:"error,omitempty"`
	Used  []int  `json:"used"`
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: kubelet-oracle lookup|corpus|version")
	}
	switch os.Args[1] {
	case "lookup":
		lookupLines()
	case "corpus":
		corpus()
	case "version":
		fmt.Printf("k8s.io/kubernetes %s, github.com/distribution/reference %s, %s\n",
			kubernetesVersion, referenceVersion, runtime.Version())
	default:
		fail("unknown command %q: lookup|corpus|version", os.Args[1])
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubelet-oracle: "+format+"\n", args...)
	os.Exit(2)
}

func lookupLines() {
	gate := string(features.KubeletEnsureSecretPulledImages) + "=true"
	if err := utilfeature.DefaultMutableFeatureGate.Set(gate); err != nil {
		fail("enabling %s: %v", gate, err)
	}
	// kubelet logs each auths key it ignores; the answers say all the test needs.
	klog.SetLogger(logr.Discard())
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	enc := json.NewEncoder(out)
	for in.Scan() {
		var q query
		if err := json.Unmarshal(in.Bytes(), &q); err != nil {
			fail("query %q: %v", in.Text(), err)
		}
		if err := enc.Encode(lookup(q)); err != nil {
			fail("writing an answer: %v", err)
		}
	}
	if err := in.Err(); err != nil {
		fail("reading queries: %v", err)
	}
	if err := out.Flush(); err != nil {
		fail("writing answers: %v", err)
	}
}

func lookup(q query) answer {
	// images.applyDefaultImageTag
	_, tag, digest, err := parsers.ParseImageName(q.Image)
	if err != nil {
		return answer{Error: err.Error(), Used: []int{}}
	}
	image := q.Image
	if len(digest) == 0 && len(tag) > 0 && !strings.HasSuffix(image, ":"+tag) {
		image = image + ":" + tag
	}

	// images.makeLookupPullCredentialsFunc
	repoToPull, _, _, err := parsers.ParseImageName(image)
	if err != nil {
		return answer{Error: err.Error(), Used: []int{}}
	}
	secrets := make([]v1.Secret, len(q.Secrets))
	for i, data := range q.Secrets {
		secrets[i] = v1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: secretName(i), Namespace: "oracle", UID: types.UID("uid-" + secretName(i))},
			Type:       v1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{v1.DockerConfigJsonKey: []byte(data)},
		}
	}
	keyring, err := credentialprovidersecrets.MakeDockerKeyring(secrets, credentialprovider.UnionDockerKeyring{})
	if err != nil {
		return answer{Name: repoToPull, Error: "pull secrets: " + err.Error(), Used: []int{}}
	}
	creds, _ := keyring.Lookup(repoToPull)
	seen := map[int]bool{}
	used := []int{}
	for _, c := range creds {
		if c.Source == nil || c.Source.Secret == nil {
			fail("a credential without its source Secret for %q", q.Image)
		}
		i, err := strconv.Atoi(strings.TrimPrefix(c.Source.Secret.Name, "secret-"))
		if err != nil {
			fail("credential from unexpected Secret %q", c.Source.Secret.Name)
		}
		if !seen[i] {
			seen[i] = true
			used = append(used, i)
		}
	}
	sort.Ints(used)
	return answer{Name: repoToPull, Used: used}
}

func secretName(i int) string { return "secret-" + strconv.Itoa(i) }

type corpusFile struct {
	File     string   `json:"file"`
	Literals []string `json:"literals"`
}

func corpus() {
	if kubernetesDir == "" || referenceDir == "" {
		fail("built without the module directories (use scripts/kubelet-oracle.sh)")
	}
	files := []string{
		filepath.Join(kubernetesDir, "pkg", "credentialprovider", "keyring_test.go"),
		filepath.Join(referenceDir, "reference_test.go"),
		filepath.Join(referenceDir, "normalize_test.go"),
		filepath.Join(referenceDir, "regexp_test.go"),
	}
	enc := json.NewEncoder(os.Stdout)
	for _, f := range files {
		lits, err := literals(f)
		if err != nil {
			fail("%v", err)
		}
		if len(lits) == 0 {
			fail("%s holds no string literals", f)
		}
		if err := enc.Encode(corpusFile{File: f, Literals: lits}); err != nil {
			fail("writing the corpus: %v", err)
		}
	}
}

// literals returns the distinct string literals of a Go file, in order of appearance, and
// after each JSON object literal the keys of it and of its "auths" object.
func literals(file string) ([]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", file, err)
	}
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			return true
		}
		add(s)
		var obj map[string]json.RawMessage
		if json.Unmarshal([]byte(s), &obj) == nil {
			addKeys(add, obj)
			var auths map[string]json.RawMessage
			if json.Unmarshal(obj["auths"], &auths) == nil {
				addKeys(add, auths)
			}
		}
		return true
	})
	return out, nil
}

func addKeys(add func(string), obj map[string]json.RawMessage) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(k)
	}
}
