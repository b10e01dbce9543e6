#!/usr/bin/env python3
"""Build OCI image layouts with no registry and no daemon.

    scripts/oci-image.py OUT_DIR TAG BINARY ENTRYPOINT...
        One gzip layer holding BINARY as /bin/busybox plus an empty /tmp, a config whose
        Entrypoint is ENTRYPOINT (the test images of scripts/node.sh).

    scripts/oci-image.py --rootfs OUT_DIR TAG CONFIG_JSON LAYER_DIR...
        One gzip layer per LAYER_DIR (its whole tree, owners, modes and symlinks as on disk;
        device nodes are refused), lowest first, and a config whose "config" object is
        CONFIG_JSON (Env, User, WorkingDir, Entrypoint, Cmd: the base images of scripts/image.sh).

    scripts/oci-image.py --inspect ARCHIVE
        Reads an OCI archive (a tar of a layout, as BuildKit's `type=oci` output writes it) and
        prints JSON: manifestDigest, config (the image config) and files: every path of the
        root filesystem with all layers applied (whiteouts honoured), each with type, mode,
        uid, gid, size and link target.

OUT_DIR gets oci-layout, index.json (the manifest tagged TAG) and blobs/sha256/*. Every
timestamp is fixed and entries are sorted, so the same inputs always give the same digests (a
rebuild is a no-op for a registry). Copy it anywhere with skopeo:
`skopeo copy oci:OUT_DIR:TAG docker://HOST/REPO:TAG`. Prints the manifest digest.
"""
import gzip, hashlib, io, json, os, platform, stat, sys, tarfile, tempfile


class Layout:
    def __init__(self, out):
        self.out = out
        self.blobs = os.path.join(out, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def layer_from_tar_file(self, tar_path):
        """Gzip an uncompressed layer tar into a blob; returns (descriptor, diff_id)."""
        raw = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.blobs)
        with open(tar_path, "rb") as src, os.fdopen(fd, "wb") as dst:
            with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=6, mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    raw.update(chunk)
                    gz.write(chunk)
        digest, size = file_digest(tmp)
        os.replace(tmp, os.path.join(self.blobs, digest))
        desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + digest, "size": size}
        return desc, "sha256:" + raw.hexdigest()

    def finish(self, tag, image_config, layers, diff_ids, created_by):
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        config = self.blob(json.dumps({
            "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
        }, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = self.blob(json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        }, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
        manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
        with open(os.path.join(self.out, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
        with open(os.path.join(self.out, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        return manifest["digest"]


def file_digest(path):
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def busybox_image(out, tag, binary, entrypoint):
    layout = Layout(out)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777)):
            d = tarfile.TarInfo(name)
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(d)
        with open(binary, "rb") as f:
            data = f.read()
        t = tarfile.TarInfo("bin/busybox")
        t.mode, t.mtime, t.size = 0o755, 0, len(data)
        tar.addfile(t, io.BytesIO(data))
    layer_tar = raw.getvalue()
    layer = layout.blob(gzip.compress(layer_tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    config = {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"}
    return layout.finish(tag, config, [layer], [diff_id], "scripts/oci-image.py")


def add_tree(tar, root):
    """Every entry below root, sorted, with its owner and mode, mtime 0."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            arc = os.path.relpath(path, root)
            st = os.lstat(path)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                sys.exit(f"oci-image.py: {path} is not a file, directory or symlink")
            info = tar.gettarinfo(path, arcname=arc)
            info.mtime, info.uname, info.gname = 0, "", ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def rootfs_image(out, tag, config_json, dirs):
    layout = Layout(out)
    layers, diff_ids = [], []
    for d in dirs:
        with tempfile.NamedTemporaryFile(dir=out, suffix=".tar") as tmp:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                add_tree(tar, d)
            tmp.flush()
            desc, diff_id = layout.layer_from_tar_file(tmp.name)
        layers.append(desc)
        diff_ids.append(diff_id)
    return layout.finish(tag, json.loads(config_json), layers, diff_ids, "scripts/oci-image.py --rootfs")


def inspect_archive(archive):
    with tarfile.open(archive) as outer:
        def read(name):
            return outer.extractfile(outer.getmember(name)).read()

        def blob(digest):
            return "blobs/" + digest.replace(":", "/")

        index = json.loads(read("index.json"))
        manifests = index["manifests"]
        if len(manifests) != 1:
            sys.exit(f"oci-image.py: {archive} holds {len(manifests)} images, expected 1")
        desc = manifests[0]
        manifest = json.loads(read(blob(desc["digest"])))
        if manifest.get("mediaType", desc.get("mediaType")) == "application/vnd.oci.image.index.v1+json":
            sys.exit(f"oci-image.py: {archive} holds a multi-platform index; build one platform")
        config = json.loads(read(blob(manifest["config"]["digest"])))
        files = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(read(blob(layer["digest"])))) as tar:
                for m in tar.getmembers():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    path = "/" + name.strip("/") if name.strip("/") not in ("", ".") else "/"
                    base, leaf = os.path.split(path)
                    if leaf == ".wh..wh..opq":
                        for p in [p for p in files if p.startswith(base.rstrip("/") + "/")]:
                            del files[p]
                        continue
                    if leaf.startswith(".wh."):
                        gone = os.path.join(base, leaf[4:])
                        for p in [p for p in files if p == gone or p.startswith(gone + "/")]:
                            del files[p]
                        continue
                    kind = ("dir" if m.isdir() else "symlink" if m.issym() else "hardlink" if m.islnk()
                            else "file" if m.isreg() else "other")
                    files[path] = {"type": kind, "mode": m.mode, "uid": m.uid, "gid": m.gid,
                                   "size": m.size, "link": m.linkname or None}
    return {"manifestDigest": desc["digest"], "config": config, "files": files}


def main():
    args = sys.argv[1:]
    if args[:1] == ["--rootfs"] and len(args) >= 5:
        print(rootfs_image(args[1], args[2], args[3], args[4:]))
    elif args[:1] == ["--inspect"] and len(args) == 2:
        print(json.dumps(inspect_archive(args[1]), indent=1, sort_keys=True))
    elif len(args) >= 4 and not args[0].startswith("-"):
        print(busybox_image(args[0], args[1], args[2], args[3:]))
    else:
        sys.exit(__doc__.strip())


main()
