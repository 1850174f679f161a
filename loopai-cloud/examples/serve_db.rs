//! A cloud server on a PostgreSQL database, for measuring the dashboard there
//! (`benches/compare/dashboard-latency.py --serve-db`):
//!
//! ```text
//! cargo run -p loopai-cloud --example serve_db -- DIR KEYS_FILE postgres://user@host:port/db
//! ```
//!
//! Prints `listening on http://127.0.0.1:PORT` and serves until SIGINT or SIGTERM.

use std::time::Duration;

use loopai_cloud::CloudServer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, keys, url] = args.as_slice() else {
        return Err("usage: serve_db DIR KEYS_FILE DATABASE_URL".into());
    };
    let mut handle = CloudServer::builder()
        .dir(dir)
        .api_keys_file(keys)
        .database(url)
        .port(0)
        .build()?
        .spawn()?;
    eprintln!("listening on {}", handle.url());
    handle.wait_for_signal()?;
    handle.shutdown(Duration::from_secs(10))?;
    Ok(())
}
