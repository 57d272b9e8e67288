//! `tessera ingest PATH...`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_catalog::ingest::DEFAULT_MAX_FILE_BYTES;
use tessera_catalog::{IngestOptions, IngestReport, Progress};

use crate::config::GlobalArgs;
use crate::output;
use crate::output::say;

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Files, folders (walked recursively: *.json, *.ndjson, *.jsonl, *.tar, *.tar.zst; names
    /// starting with `.` or `_` are skipped) and archives.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Namespace of the sources' FHIR logical ids (one per FHIR server or export).
    #[arg(long, env = "TESSERA_INGEST_SOURCE", default_value = "default")]
    pub source: String,

    /// Larger files are quarantined as oversize.
    #[arg(long, env = "TESSERA_MAX_FILE_BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,

    /// Parser threads (0: one per core).
    #[arg(long, env = "TESSERA_INGEST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// A progress bar on standard error, drawn only when it is a terminal.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    files: std::sync::atomic::AtomicU64,
    records: std::sync::atomic::AtomicU64,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar {
            bar,
            files: 0.into(),
            records: 0.into(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{files} files"));
        self.files.store(0, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_prefix(files.to_string());
    }

    fn file_done(&self, bytes: u64, records: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.files.fetch_add(1, Relaxed) + 1;
        let r = self.records.fetch_add(records, Relaxed) + records;
        self.bar.inc(bytes);
        self.bar
            .set_message(format!("{f}/{} files, {r} records", self.bar.prefix()));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn options(args: &IngestArgs) -> IngestOptions {
    IngestOptions {
        source: args.source.clone(),
        max_file_bytes: args.max_file_bytes,
        workers: args.workers,
        owner: None,
    }
}

/// Prints what an ingest did, and what it refused.
pub fn print_report(report: &IngestReport, seconds: f64) {
    let r = &report.records;
    say!(
        "ingested {} files ({}) in {seconds:.1} s: {} patients new, {} updated, {} unchanged; records {} added, {} updated, {} unchanged",
        report.files,
        output::bytes(report.bytes),
        report.patients_new,
        report.patients_updated,
        report.patients_unchanged,
        r.added,
        r.updated,
        r.unchanged
    );
    let rows: Vec<Vec<String>> = report
        .by_resource_type
        .iter()
        .map(|(t, c)| {
            vec![
                t.clone(),
                c.added.to_string(),
                c.updated.to_string(),
                c.unchanged.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(&["resource type", "added", "updated", "unchanged"], &rows);
    }
    if report.quarantined.is_empty() {
        say!("nothing was quarantined");
    } else {
        say!(
            "quarantined {} file(s) or entries; they did not go in, everything else did:",
            report.quarantined.len()
        );
        for q in &report.quarantined {
            say!("  {q}");
        }
        say!("see them again with `tessera quarantine list`");
    }
}

pub async fn run(g: &GlobalArgs, args: IngestArgs) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let bar = Bar::new();
    let started = Instant::now();
    let report = catalog.ingest(&args.paths, &options(&args), &bar).await?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, seconds);
    }
    catalog.close().await;
    Ok(if report.quarantined.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_QUARANTINED)
    })
}
