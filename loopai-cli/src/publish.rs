//! `loopai publish`: upload a program (or a version directory) to an artifact repository.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use loopai_core::{validate_task_id, ArtifactArchive, Error, ErrorKind};
use serde_json::Value;

/// How long the upload may take.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The repository's base URL (like `cloud.api_url`): uploads to
    /// URL/api/v1/artifacts/TASK/upload.
    #[arg(long, value_name = "URL")]
    api_url: String,
    /// A publisher API key (sent as `Authorization: Bearer KEY`).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The task id.
    #[arg(long, value_name = "TASK")]
    task: String,
    /// Publish as this version number (refused with 409 if it exists); default: the next.
    #[arg(long = "as-version", value_name = "N")]
    as_version: Option<u32>,
    /// Trust only the CA certificates in this PEM file for the repository's HTTPS
    /// certificate (a repository behind a private CA, like `cloud.ca_file`).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// A program.json file, or a version directory holding program.json and, optionally,
    /// metadata.json (its schemas, description and generator fields are kept).
    #[arg(value_name = "PROGRAM_OR_DIR")]
    path: PathBuf,
}

/// The archive to upload: program.json and metadata.json of a directory, or one file.
fn archive(path: &Path) -> Result<Vec<u8>, Error> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p.display(), e));
    let (program, metadata) = if path.is_dir() {
        let meta = path.join("metadata.json");
        let metadata = if meta.exists() {
            Some(read(&meta)?)
        } else {
            None
        };
        (read(&path.join("program.json"))?, metadata)
    } else {
        (read(path)?, None)
    };
    ArtifactArchive::new(program, metadata).pack()
}

/// The certificates of a `--ca-file` (at least one).
fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Error> {
    let fail = |what: String| {
        Error::new(
            ErrorKind::Config,
            format!("--ca-file {}: {what}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| fail(e.to_string()))? {
            ureq::tls::PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

pub(crate) fn run(args: PublishArgs) -> Result<ExitCode, Error> {
    validate_task_id(&args.task)?;
    let body = archive(&args.path)?;
    let mut url = format!(
        "{}/api/v1/artifacts/{}/upload",
        args.api_url.trim_end_matches('/'),
        args.task
    );
    if let Some(v) = args.as_version {
        url.push_str(&format!("?version={v}"));
    }
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = &args.ca_file {
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(
            read_ca_file(path)?,
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(url.starts_with("https://"))
        .tls_config(tls.build())
        .timeout_global(Some(TIMEOUT))
        .user_agent(format!("loopai/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut request = agent.post(&url).header("Content-Type", "application/gzip");
    if let Some(key) = &args.api_key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut response = request
        .send(&body[..])
        .map_err(|e| Error::new(ErrorKind::Io, format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if status != 201 {
        let why = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        return Err(Error::new(
            ErrorKind::Artifact,
            format!("{url}: HTTP {status}: {why}"),
        ));
    }
    let entry = json.unwrap_or(Value::Null);
    let version = entry
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Artifact,
                format!("{url}: answered 201 without a version: {text}"),
            )
        })?;
    println!(
        "published {} v{version} (archive sha256 {}, {} bytes{})",
        args.task,
        entry["sha256"]
            .as_str()
            .map_or("?", |s| &s[..s.len().min(12)]),
        entry["size"],
        if entry["signature"].is_string() {
            ", signed"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
