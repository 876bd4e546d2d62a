// SPDX-License-Identifier: Apache-2.0
//! OCI image archives made from local files, for nodes that cannot reach a registry.
//!
//! An image here is one uncompressed layer holding the listed files, a config naming its
//! entrypoint, and a manifest, laid out as an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) inside one tar archive that `ctr images import` reads. The index carries
//! the full reference in the `io.containerd.image.name` annotation, which is the name the
//! image gets in containerd, so pods find it by exactly that name without pulling.
//!
//! Archives are reproducible: entries are sorted and every timestamp and owner is zero.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Media type of an OCI manifest.
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One entry of the image's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file copied from the host, with its mode.
    File {
        /// Host path.
        source: PathBuf,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file with these bytes.
    Bytes {
        /// The contents.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A directory with this mode.
    Dir {
        /// Permission bits.
        mode: u32,
    },
}

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, `registry/repository:tag` (never `:latest`).
    pub reference: String,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// `uid[:gid]` to run as, if not root.
    pub user: Option<String>,
    /// Files by absolute path inside the image.
    pub files: BTreeMap<String, Content>,
}

impl ImageSpec {
    /// An image `reference` with `entrypoint` and a standard `PATH`, no files yet.
    pub fn new(reference: &str, entrypoint: &[&str]) -> ImageSpec {
        ImageSpec {
            reference: reference.to_owned(),
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
            files: BTreeMap::new(),
        }
    }

    /// Adds host file `source` at `path` with `mode`.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) -> &mut Self {
        self.files.insert(
            path.to_owned(),
            Content::File {
                source: source.to_owned(),
                mode,
            },
        );
        self
    }

    /// Adds a file with `data` at `path`.
    pub fn bytes(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.files.insert(
            path.to_owned(),
            Content::Bytes {
                data: data.to_owned(),
                mode,
            },
        );
        self
    }

    /// Adds a symbolic link at `path` to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.files.insert(
            path.to_owned(),
            Content::Symlink {
                target: target.to_owned(),
            },
        );
        self
    }

    /// Adds a directory at `path`.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.files.insert(path.to_owned(), Content::Dir { mode });
        self
    }

    /// Writes the image as an OCI layout archive at `out`.
    pub fn write_archive(&self, out: &Path) -> Result<()> {
        let (name, tag) = split_reference(&self.reference)?;
        let layer = self.layer().context("build the layer")?;
        let layer_digest = sha256(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "User": self.user.clone().unwrap_or_default(),
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created_by": "weave-cluster image builder" }],
        }))?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": { "mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len() }],
        }))?;
        let manifest_digest = sha256(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.reference,
                    "org.opencontainers.image.ref.name": tag,
                },
                "platform": { "architecture": "amd64", "os": "linux" },
            }],
        }))?;
        let file =
            std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        append_bytes(
            &mut archive,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        append_bytes(&mut archive, "index.json", &index, 0o644)?;
        for (digest, blob) in [
            (&manifest_digest, &manifest),
            (&config_digest, &config),
            (&layer_digest, &layer),
        ] {
            let hex = digest.trim_start_matches("sha256:");
            append_bytes(&mut archive, &format!("blobs/sha256/{hex}"), blob, 0o644)?;
        }
        let mut writer = archive.into_inner().context("finish the archive")?;
        writer
            .flush()
            .with_context(|| format!("write {} (image {name})", out.display()))?;
        Ok(())
    }

    /// The layer: every file, with every parent directory listed before it.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut entries: BTreeMap<String, Content> = BTreeMap::new();
        for (path, content) in &self.files {
            if !path.starts_with('/') || path.contains("/../") || path.ends_with("/..") {
                bail!("image path {path:?} must be absolute and plain");
            }
            let mut parent = Path::new(path).parent();
            while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
                entries
                    .entry(dir.display().to_string())
                    .or_insert(Content::Dir { mode: 0o755 });
                parent = dir.parent();
            }
            entries.insert(path.clone(), content.clone());
        }
        let mut layer = tar::Builder::new(Vec::new());
        for (path, content) in &entries {
            let name = path.trim_start_matches('/');
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match content {
                Content::File { source, mode } => {
                    let data = std::fs::read(source)
                        .with_context(|| format!("read {} for {path}", source.display()))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    layer.append_data(&mut header, name, data.as_slice())?;
                }
                Content::Bytes { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    layer.append_data(&mut header, name, data.as_slice())?;
                }
                Content::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    layer.append_link(&mut header, name, target)?;
                }
                Content::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    layer.append_data(&mut header, format!("{name}/"), std::io::empty())?;
                }
            }
        }
        Ok(layer.into_inner()?)
    }
}

/// Splits `registry/repo:tag` into the name and the tag; refuses a missing tag and `latest`
/// (which would make the kubelet pull on every start).
pub(crate) fn split_reference(reference: &str) -> Result<(&str, &str)> {
    let (name, tag) = reference
        .rsplit_once(':')
        .filter(|(name, tag)| !tag.contains('/') && !name.is_empty() && !tag.is_empty())
        .with_context(|| format!("image reference {reference:?} has no tag"))?;
    if tag == "latest" {
        bail!("image reference {reference:?}: a :latest tag makes the kubelet pull; pin a version");
    }
    Ok((name, tag))
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Appends a regular file with `data` to an archive.
fn append_bytes<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    archive
        .append_data(&mut header, path, data)
        .with_context(|| format!("append {path}"))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut reader = tar::Archive::new(archive);
        for entry in reader.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            out.insert(path, data);
        }
        out
    }

    #[test]
    fn archive_is_a_valid_oci_layout_naming_the_image() {
        let dir = std::env::temp_dir().join(format!("wv-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let out = dir.join("img.tar");
        let mut spec = ImageSpec::new("registry.example/test/app:1.2", &["/app"]);
        spec.bytes("/app", b"#!/bin/sh\n", 0o755)
            .symlink("/bin/sh", "/app");
        spec.write_archive(&out).expect("write archive");
        let outer = entries(&std::fs::read(&out).expect("read archive"));
        let index: serde_json::Value = serde_json::from_slice(&outer["index.json"]).expect("index");
        let manifest_ref = &index["manifests"][0];
        assert_eq!(
            manifest_ref["annotations"]["io.containerd.image.name"],
            "registry.example/test/app:1.2"
        );
        // Every digest names the blob that has it.
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().expect("digest");
            let data = &outer[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))];
            assert_eq!(sha256(data), digest);
            data.clone()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&manifest_ref["digest"])).expect("manifest");
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).expect("config");
        let layer = blob(&manifest["layers"][0]["digest"]);
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/app");
        let files = entries(&layer);
        assert_eq!(files["app"], b"#!/bin/sh\n");
        assert!(
            files.contains_key("bin/"),
            "parent directory listed: {:?}",
            files.keys()
        );
        // Reproducible.
        let again = dir.join("again.tar");
        spec.write_archive(&again).expect("write again");
        assert_eq!(
            std::fs::read(&out).expect("a"),
            std::fs::read(&again).expect("b")
        );
        std::fs::remove_dir_all(&dir).expect("remove test dir");
    }

    #[test]
    fn references_need_a_pinned_tag() {
        assert_eq!(
            split_reference("registry.k8s.io/pause:3.10.2").expect("pinned"),
            ("registry.k8s.io/pause", "3.10.2")
        );
        assert!(split_reference("registry.k8s.io/pause").is_err());
        assert!(split_reference("localhost:5000/pause").is_err());
        assert!(split_reference("example/app:latest").is_err());
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut spec = ImageSpec::new("a/b:1", &["/x"]);
        spec.bytes("x", b"", 0o644);
        let err = spec.layer().expect_err("relative path");
        assert!(format!("{err:#}").contains("absolute"), "{err:#}");
    }
}
