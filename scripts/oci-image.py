#!/usr/bin/env python3
"""Build a one-layer OCI image layout from a static binary, with no registry and no daemon.

    scripts/oci-image.py OUT_DIR TAG BINARY ENTRYPOINT...

OUT_DIR gets oci-layout, index.json (the manifest tagged TAG) and blobs/sha256/*: one gzip
layer holding BINARY as /bin/busybox plus an empty /tmp, a config whose rootfs.diff_ids name
that layer and whose Entrypoint is ENTRYPOINT, and a manifest. Every timestamp is fixed, so
the same inputs always give the same digests (a rebuild is a no-op for the registry).
Copy it anywhere with skopeo: `skopeo copy oci:OUT_DIR:TAG docker://HOST/REPO:TAG`.
"""
import gzip, hashlib, io, json, os, platform, sys, tarfile

def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__.strip())
    out, tag, binary, entrypoint = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def blob(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

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
    layer = blob(gzip.compress(layer_tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = blob(json.dumps({
        "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/oci-image.py"}],
    }, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    }, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(manifest["digest"])

main()
