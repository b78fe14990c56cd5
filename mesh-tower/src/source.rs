//! The file config source: Istio YAML files and directories, watched for changes.
//!
//! Every `interval` the source reads its paths again; when the text changed it builds a new
//! snapshot. A valid change is published; an invalid one is logged, recorded in the store
//! (the admin endpoint shows it), and the last good snapshot keeps serving. Polling, rather
//! than inotify, works the same on every platform, on ConfigMap symlink swaps and over
//! network file systems, and costs one read of a few kilobytes a second.

use mesh_core::istio::{self, Diagnostic, MeshOptions, Severity};
use mesh_core::model::{MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A config source reading Istio YAML from files and directories.
#[derive(Clone, Debug)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    workload: Workload,
    options: MeshOptions,
}

/// What one read of the files produced.
#[derive(Debug)]
pub struct Loaded {
    /// The config, when there are no errors.
    pub config: Option<MeshConfig>,
    /// Every finding, errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// The files read and their text, to detect changes.
    files: Vec<(PathBuf, String)>,
}

impl FileSource {
    /// A source over `paths` (files, or directories whose `*.yaml`/`*.yml` files are read in
    /// name order), resolved for `workload`.
    pub fn new(paths: Vec<PathBuf>, workload: Workload) -> Self {
        Self {
            paths,
            workload,
            options: MeshOptions::default(),
        }
    }

    /// Builds with Istio's mesh-wide settings `options` (root namespace, path normalization)
    /// instead of Istio's defaults.
    pub fn options(mut self, options: MeshOptions) -> Self {
        self.options = options;
        self
    }

    /// Reads and builds the config once. Unreadable paths are errors, like bad YAML.
    pub async fn load(&self) -> Loaded {
        let (files, mut diagnostics) = self.read().await;
        let texts: Vec<(String, &str)> = files
            .iter()
            .map(|(p, t)| (p.display().to_string(), t.as_str()))
            .collect();
        let refs: Vec<(&str, &str)> = texts.iter().map(|(p, t)| (p.as_str(), *t)).collect();
        let mut outcome = istio::load_with(&refs, &self.workload, &self.options);
        diagnostics.append(&mut outcome.diagnostics);
        let has_errors = diagnostics.iter().any(Diagnostic::is_error);
        Loaded {
            config: outcome.config.filter(|_| !has_errors),
            diagnostics,
            files,
        }
    }

    async fn read(&self) -> (Vec<(PathBuf, String)>, Vec<Diagnostic>) {
        let mut files = Vec::new();
        let mut diagnostics = Vec::new();
        let unreadable = |path: &Path, e: std::io::Error| Diagnostic {
            severity: Severity::Error,
            file: path.display().to_string(),
            resource: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        };
        for path in &self.paths {
            let mut batch = Vec::new();
            match tokio::fs::metadata(path).await {
                Ok(meta) if meta.is_dir() => match yaml_files(path).await {
                    Ok(found) => batch.extend(found),
                    Err(e) => diagnostics.push(unreadable(path, e)),
                },
                Ok(_) => batch.push(path.clone()),
                Err(e) => diagnostics.push(unreadable(path, e)),
            }
            for file in batch {
                match tokio::fs::read_to_string(&file).await {
                    Ok(text) => files.push((file, text)),
                    Err(e) => diagnostics.push(unreadable(&file, e)),
                }
            }
        }
        (files, diagnostics)
    }

    /// Polls the files every `interval` and publishes each valid change to `store`, starting
    /// from `current` (the result of the initial [`load`](Self::load)). Runs until dropped.
    pub async fn watch(self, store: Arc<ConfigStore>, current: Loaded, interval: Duration) {
        let mut seen = current.files;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let (files, _) = self.read().await;
            if files == seen {
                continue;
            }
            let loaded = self.load().await;
            seen = loaded.files;
            match loaded.config {
                Some(config) => {
                    for w in &loaded.diagnostics {
                        tracing::warn!("{w}");
                    }
                    if store.load().config != config {
                        let version = store.publish(config);
                        metrics::counter!("mesh_config_reloads_total", "result" => "accepted")
                            .increment(1);
                        tracing::info!(version, "config reloaded");
                    }
                }
                None => {
                    let errors: Vec<String> = loaded
                        .diagnostics
                        .iter()
                        .filter(|d| d.is_error())
                        .map(ToString::to_string)
                        .collect();
                    for e in &errors {
                        tracing::error!("config rejected: {e}");
                    }
                    metrics::counter!("mesh_config_reloads_total", "result" => "rejected")
                        .increment(1);
                    store.reject("files", errors);
                }
            }
        }
    }
}

async fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut found = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        // Skip hidden files: editors' swap files and Kubernetes' `..data` links.
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_yaml && !hidden && tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}
