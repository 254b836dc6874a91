//! Loading a profiles directory: read every file (bounded, hidden entries skipped), parse the
//! profile TOML files, resolve them, cross-check them, compile every template and render
//! everything once per known machine. Every problem is collected, with file and line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use toml::Spanned;

use super::raw::RawProfile;
use super::resolve::{File, check_ambiguity, resolve_profile};
use super::{Location, MacAddr, Machine, Profile, ProfileSet, Sources, documents};
use crate::diag::{self, Diagnostic, Diagnostics};
use crate::render::Engine;

/// Built-in iPXE scripts, used when the configured script directory lacks a file.
const BUILTIN_SCRIPTS: &[(&str, &str)] = &[
    ("boot.ipxe.j2", include_str!("../../ipxe/boot.ipxe.j2")),
    (
        "profile.ipxe.j2",
        include_str!("../../ipxe/profile.ipxe.j2"),
    ),
    ("grub.cfg.j2", include_str!("../../ipxe/grub.cfg.j2")),
];

/// Keys of a profile file outside any table; written after `[boot]` they land inside it.
const TOP_LEVEL_KEYS: &[&str] = &["description", "default", "ignition", "after_provision"];

/// Largest template or profile file read, so a stray disk image in the tree cannot eat memory.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Accumulates everything found while loading, so one pass reports every problem.
pub(super) struct Loader {
    pub(super) errors: Vec<Diagnostic>,
    /// Relative name → absolute path of every file under the profiles tree.
    pub(super) files: BTreeMap<String, PathBuf>,
    /// Template name → source, compiled at the end.
    pub(super) templates: BTreeMap<String, String>,
    pub(super) origins: HashMap<String, Location>,
}

impl Loader {
    pub(super) fn err(&mut self, path: &Path, source: &str, offset: usize, msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::at_offset(path, source, offset, msg));
    }

    /// Parse a spanned value, or report `invalid WHAT "value"` at its line.
    pub(super) fn parse<T>(
        &mut self,
        path: &Path,
        source: &str,
        field: &Spanned<String>,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(field.get_ref());
        if parsed.is_none() {
            self.err(
                path,
                source,
                field.span().start,
                format!("invalid {what} {:?}", field.get_ref()),
            );
        }
        parsed
    }

    /// Register the file template `rel` (relative to the profiles dir) if it exists.
    pub(super) fn file_template(
        &mut self,
        rel: &Spanned<String>,
        path: &Path,
        source: &str,
    ) -> Option<String> {
        let name = rel.get_ref().trim().to_string();
        if let Err(msg) = check_relative(&name) {
            self.err(path, source, rel.span().start, msg.to_string());
            return None;
        }
        let name = normalize(&name);
        if self.templates.contains_key(&name) {
            return Some(name);
        }
        let Some(file) = self.files.get(&name).cloned() else {
            self.err(
                path,
                source,
                rel.span().start,
                format!("template {name:?} not found in the profiles directory"),
            );
            return None;
        };
        match read_limited(&file) {
            Ok(text) => {
                self.templates.insert(name.clone(), text);
                self.origins.insert(
                    name.clone(),
                    Location {
                        path: file,
                        line: 1,
                    },
                );
                Some(name)
            }
            Err(e) => {
                self.err(
                    path,
                    source,
                    rel.span().start,
                    format!("template {name:?}: {e}"),
                );
                None
            }
        }
    }

    /// Register an inline template (a boot string) under a synthetic name.
    pub(super) fn inline_template(
        &mut self,
        name: String,
        text: &Spanned<String>,
        path: &Path,
        source: &str,
    ) -> String {
        let line = diag::line_of(source, text.span().start);
        self.templates.insert(name.clone(), text.get_ref().clone());
        self.origins.insert(
            name.clone(),
            Location {
                path: path.to_path_buf(),
                line,
            },
        );
        name
    }
}

/// Why a file of the profiles tree cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum FileError {
    /// A template path with no name.
    #[error("template path is empty")]
    EmptyPath,
    /// A template path reaching out of the tree.
    #[error("template path {0:?} must be relative to the profiles directory, without '..'")]
    Escapes(String),
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("file is larger than {} MiB", MAX_FILE_BYTES >> 20)]
    TooLarge,
    /// Not text.
    #[error("file is not UTF-8 text")]
    NotUtf8,
    /// Not readable.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Template names are relative paths inside the profiles tree; nothing may escape it.
fn check_relative(name: &str) -> Result<(), FileError> {
    let p = Path::new(name);
    if name.is_empty() {
        return Err(FileError::EmptyPath);
    }
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(FileError::Escapes(name.to_string()));
    }
    Ok(())
}

fn normalize(name: &str) -> String {
    Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A file's text, refused when larger than [`MAX_FILE_BYTES`] (a stray disk image in the tree
/// cannot eat memory).
pub(super) fn read_limited(path: &Path) -> Result<String, FileError> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)
}

/// Most files, and most directories, read from a profiles tree (a mount of something else
/// must not stall a load).
const MAX_FILES: usize = 20_000;
const MAX_DIRS: usize = 10_000;

/// Every regular file under `dir`, by relative path; hidden entries (editor swap files,
/// Kubernetes' `..data` ConfigMap directories) are skipped. Symlinks are followed (ConfigMap
/// mounts are symlinks into `..data`), but never into a directory the walk is already inside
/// (a loop), and the walk is bounded in files, directories and depth.
fn walk(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    let mut walk = Walk {
        out,
        inside: Vec::new(),
        dirs: 0,
    };
    walk.dir(dir, "")
}

struct Walk<'a> {
    out: &'a mut BTreeMap<String, PathBuf>,
    /// (device, inode) of the directories from the top down to the current one.
    inside: Vec<(u64, u64)>,
    dirs: usize,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, rel: &str) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir)?;
        let id = (meta.dev(), meta.ino());
        if self.inside.len() > 16 || self.inside.contains(&id) || self.dirs >= MAX_DIRS {
            return Ok(());
        }
        self.dirs += 1;
        self.inside.push(id);
        let result = self.entries(dir, rel);
        self.inside.pop();
        result
    }

    fn entries(&mut self, dir: &Path, rel: &str) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if self.out.len() >= MAX_FILES {
                break;
            }
            let path = entry.path();
            let rel_name = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.dir(&path, &rel_name)?,
                Ok(m) if m.is_file() => {
                    self.out.insert(rel_name, path);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl ProfileSet {
    /// Load, cross-check, compile and test-render everything under `sources`.
    ///
    /// `base_url` is used only for the test renders. Every problem found is returned.
    pub fn load(sources: &Sources, base_url: &str) -> Result<ProfileSet, Diagnostics> {
        let mut ld = Loader {
            errors: Vec::new(),
            files: BTreeMap::new(),
            templates: BTreeMap::new(),
            origins: HashMap::new(),
        };
        if let Err(e) = walk(&sources.profiles, &mut ld.files) {
            return Err(Diagnostics(vec![Diagnostic::new(
                &sources.profiles,
                None,
                format!("cannot read the profiles directory: {e}"),
            )]));
        }
        load_scripts(&sources.scripts, &mut ld);

        let profile_files: Vec<(String, PathBuf)> = ld
            .files
            .iter()
            .filter(|(rel, _)| !rel.contains('/') && rel.ends_with(".toml"))
            .map(|(rel, p)| (rel.trim_end_matches(".toml").to_string(), p.clone()))
            .collect();

        let mut profiles = Vec::new();
        let mut machines: HashMap<MacAddr, Machine> = HashMap::new();
        let mut selectors = Vec::new();
        let mut default: Option<usize> = None;
        // after_provision targets, checked once every profile is known.
        let mut after_refs = Vec::new();

        for (name, path) in profile_files {
            let source = match read_limited(&path) {
                Ok(s) => s,
                Err(e) => {
                    ld.errors.push(Diagnostic::new(&path, None, e.to_string()));
                    continue;
                }
            };
            let raw: RawProfile = match toml::from_str(&source) {
                Ok(r) => r,
                Err(e) => {
                    let mut d = diag::from_toml(&path, &source, &e);
                    if TOP_LEVEL_KEYS
                        .iter()
                        .any(|k| d.message.starts_with(&format!("unknown field `{k}`")))
                    {
                        d.message.push_str(
                            " (a top-level key written after a [table] header belongs to that table: move it above the first [table])",
                        );
                    }
                    ld.errors.push(d);
                    continue;
                }
            };
            let index = profiles.len();
            if let Some(a) = &raw.after_provision {
                after_refs.push((
                    a.get_ref().trim().to_string(),
                    path.clone(),
                    diag::line_of(&source, a.span().start),
                    name.clone(),
                ));
            }
            let file = File {
                name: &name,
                path: &path,
                source: &source,
                index,
            };
            let p = resolve_profile(&mut ld, &file, raw, &mut machines, &mut selectors);
            if p.default {
                if let Some(first) = default {
                    let first: &Profile = &profiles[first];
                    let line = source
                        .lines()
                        .position(|l| l.trim_start().starts_with("default"))
                        .map(|i| i + 1);
                    ld.errors.push(Diagnostic::new(
                        &path,
                        line,
                        format!(
                            "a second default profile: {} is already the default; exactly one profile may set default = true",
                            first.path.display()
                        ),
                    ));
                } else {
                    default = Some(index);
                }
            }
            profiles.push(p);
        }

        check_ambiguity(&mut ld, &profiles, &selectors);
        for (target, path, line, name) in after_refs {
            let known = profiles.iter().any(|p: &Profile| p.name == target);
            let msg = if target == name {
                Some(format!(
                    "after_provision = {target:?} names this profile itself: that is the default; use \"local\" or another profile"
                ))
            } else if target != "local" && !known {
                Some(format!(
                    "after_provision = {target:?}: no such profile (use \"local\" or the name of a profile file)"
                ))
            } else {
                None
            };
            if let Some(msg) = msg {
                ld.errors.push(Diagnostic::new(&path, Some(line), msg));
            }
        }

        // Compile every referenced template and every *.j2 file (includes, syntax check).
        let extra: Vec<String> = ld
            .files
            .keys()
            .filter(|k| {
                (k.ends_with(".j2") || k.ends_with(".jinja")) && !ld.templates.contains_key(*k)
            })
            .cloned()
            .collect();
        for rel in extra {
            let file = ld.files[&rel].clone();
            match read_limited(&file) {
                Ok(text) => {
                    ld.templates.insert(rel.clone(), text);
                    ld.origins.insert(
                        rel,
                        Location {
                            path: file,
                            line: 1,
                        },
                    );
                }
                Err(e) => ld.errors.push(Diagnostic::new(&file, None, e.to_string())),
            }
        }
        let mut engine = Engine::new();
        let digest = {
            let mut parts: Vec<Vec<u8>> = Vec::new();
            for (rel, path) in &ld.files {
                parts.push(rel.clone().into_bytes());
                parts.push(std::fs::read(path).unwrap_or_default());
            }
            for (name, text) in ld.templates.iter().filter(|(n, _)| n.starts_with("ipxe/")) {
                parts.push(name.clone().into_bytes());
                parts.push(text.clone().into_bytes());
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            format!("{:016x}", crate::digest::fnv64(&refs))
        };
        for (name, text) in std::mem::take(&mut ld.templates) {
            let origin = ld.origins.remove(&name).unwrap_or_else(|| Location {
                path: PathBuf::from(&name),
                line: 1,
            });
            if let Err(d) = engine.add(name, text, origin) {
                ld.errors.push(d);
            }
        }

        let mut set = ProfileSet {
            profiles,
            machines,
            selectors,
            default,
            engine,
            loaded_at: SystemTime::now(),
            digest,
            scripts: Default::default(),
        };
        set.selectors
            .sort_by_key(|s| std::cmp::Reverse(s.conditions.specificity()));
        if !ld.errors.is_empty() {
            // Sorted by file and line: the order an operator fixes them in.
            ld.errors
                .sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
            return Err(Diagnostics(ld.errors));
        }
        let render_errors = documents::check_all(&set, base_url);
        if !render_errors.is_empty() {
            return Err(Diagnostics(render_errors));
        }
        Ok(set)
    }
}

fn load_scripts(dir: &Path, ld: &mut Loader) {
    for (file, builtin) in BUILTIN_SCRIPTS {
        let path = dir.join(file);
        let name = format!("ipxe/{file}");
        let text = match read_limited(&path) {
            Ok(text) => text,
            Err(_) if !path.exists() => {
                ld.origins.insert(
                    name.clone(),
                    Location {
                        path: PathBuf::from(format!("<built-in>/{name}")),
                        line: 1,
                    },
                );
                ld.templates.insert(name, builtin.to_string());
                continue;
            }
            Err(e) => {
                ld.errors.push(Diagnostic::new(&path, None, e.to_string()));
                continue;
            }
        };
        ld.origins.insert(name.clone(), Location { path, line: 1 });
        ld.templates.insert(name, text);
    }
}
