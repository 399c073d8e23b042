//! kvctl's data commands (`get`, `put`, `delete`, `cas`, `scan`) over the routing client
//! (`ringkv::client`): straight to each key's region leader, with the client's retries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use ringkv::client::{Client, ClientConfig, ClientIdentity, ClientTls, Consistency};
use serde_json::{json, Value};

use super::CliError;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Print a key's value (exit 1 with "not found" if it is absent).
    Get {
        key: String,
        /// Read from any replica: faster, possibly behind the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Set a key's value.
    Put {
        key: String,
        value: String,
        /// Expire the key this many seconds after the write.
        #[arg(long)]
        ttl_secs: Option<u64>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Compare-and-swap: change the key only if it holds --expect (or is absent, with
    /// --expect-absent); exit 1 printing what it holds otherwise.
    Cas {
        key: String,
        /// The value the key must hold.
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// The key must be absent instead.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        /// The value to set.
        #[arg(long, required_unless_present = "delete")]
        new: Option<String>,
        /// Delete the key instead.
        #[arg(long, conflicts_with = "new")]
        delete: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List pairs in ring order (key hash, then key): `key<TAB>value` lines, and the cursor
    /// to continue from on stderr (in the output with --json).
    Scan {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most pairs to print (with --all: pairs per request).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from a cursor an earlier scan printed (hex).
        #[arg(long, value_parser = parse_cursor)]
        cursor: Option<Cursor>,
        /// Follow cursors to the end of the ring.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// How data commands reach the cluster (besides `--placement`).
#[derive(clap::Args, Clone)]
pub struct ConnArgs {
    /// Give up (non-zero exit) after this many seconds, retries included.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// CA certificate (PEM) to verify servers with; enables TLS.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one; needs --client-key.
    #[arg(long, requires = "client_key", requires = "ca_cert")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name server certificates are checked against (node certificates carry it).
    #[arg(long, default_value = ringkv::transport::tls::SERVER_NAME)]
    tls_domain: String,
}

impl DataCommand {
    fn conn(&self) -> &ConnArgs {
        match self {
            DataCommand::Get { conn, .. }
            | DataCommand::Put { conn, .. }
            | DataCommand::Delete { conn, .. }
            | DataCommand::Cas { conn, .. }
            | DataCommand::Scan { conn, .. } => conn,
        }
    }
}

/// Runs a data command against the cluster whose placement is at `placement` (several
/// addresses may be given, comma-separated).
pub async fn run(command: DataCommand, placement: &str, json: bool) -> Result<(), CliError> {
    let client = connect(command.conn(), placement).await?;
    match command {
        DataCommand::Get { key, stale, .. } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let value = client
                .with_consistency(consistency)
                .get(&key)
                .await
                .map_err(failed)?
                .ok_or_else(|| CliError::NotFound(key.clone()))?;
            if json {
                println!("{}", json!({ "key": key, "value": bytes_json(&value) }));
            } else {
                print_line(&value);
            }
        }
        DataCommand::Put {
            key,
            value,
            ttl_secs,
            ..
        } => {
            match ttl_secs {
                Some(secs) => {
                    client
                        .put_with_ttl(&key, &value, Duration::from_secs(secs))
                        .await
                }
                None => client.put(&key, &value).await,
            }
            .map_err(failed)?;
            done(json, &key, "written");
        }
        DataCommand::Delete { key, .. } => {
            client.delete(&key).await.map_err(failed)?;
            done(json, &key, "deleted");
        }
        DataCommand::Cas {
            key, expect, new, ..
        } => {
            let outcome = client
                .compare_and_swap(
                    &key,
                    expect.as_deref().map(str::as_bytes),
                    new.as_deref().map(str::as_bytes),
                )
                .await
                .map_err(failed)?;
            if json {
                let current = outcome.current.as_deref().map(bytes_json);
                println!(
                    "{}",
                    json!({ "key": key, "succeeded": outcome.succeeded, "current": current })
                );
            }
            if !outcome.succeeded {
                if !json {
                    if let Some(current) = &outcome.current {
                        print_line(current);
                    }
                }
                return Err(CliError::CompareFailed(match outcome.current {
                    Some(_) => format!("{key} holds another value (printed)"),
                    None => format!("{key} is absent"),
                }));
            }
            if !json {
                println!("{key}: swapped");
            }
        }
        DataCommand::Scan {
            prefix,
            limit,
            cursor,
            all,
            ..
        } => {
            scan(
                &client,
                prefix.as_bytes(),
                limit,
                cursor.unwrap_or_default().0,
                all,
                json,
            )
            .await?
        }
    }
    Ok(())
}

async fn connect(conn: &ConnArgs, placement: &str) -> Result<Client, CliError> {
    let tls = match &conn.ca_cert {
        Some(ca) => Some(ClientTls {
            ca_pem: read_pem(ca)?,
            identity: match (&conn.client_cert, &conn.client_key) {
                (Some(cert), Some(key)) => Some(ClientIdentity {
                    cert_pem: read_pem(cert)?,
                    key_pem: read_pem(key)?,
                }),
                _ => None,
            },
            domain: conn.tls_domain.clone(),
        }),
        None => None,
    };
    let config = ClientConfig {
        tls,
        timeout: Duration::from_secs(conn.timeout_secs),
        ..ClientConfig::new(placement.split(',').map(str::trim))
    };
    Client::connect(config)
        .await
        .map_err(|e| CliError::Unreachable {
            addr: placement.to_owned(),
            message: e.to_string(),
        })
}

async fn scan(
    client: &Client,
    prefix: &[u8],
    limit: usize,
    mut cursor: Vec<u8>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut listed = Vec::new();
    loop {
        let page = client.scan(&cursor, prefix, limit).await.map_err(failed)?;
        for (key, value) in &page.pairs {
            if json {
                listed.push(json!({ "key": bytes_json(key), "value": bytes_json(value) }));
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(key);
                let _ = out.write_all(b"\t");
                let _ = out.write_all(value);
                let _ = out.write_all(b"\n");
            }
        }
        match page.next_cursor {
            Some(next) if all => cursor = next,
            next => {
                let next = next.as_deref().map(to_hex);
                if json {
                    println!("{}", json!({ "pairs": listed, "next_cursor": next }));
                } else if let Some(next) = next {
                    eprintln!("next cursor: {next}");
                }
                return Ok(());
            }
        }
    }
}

fn failed(error: ringkv::client::Error) -> CliError {
    CliError::Refused(error.to_string())
}

fn done(json: bool, key: &str, what: &str) {
    if json {
        println!("{}", json!({ "key": key, "result": what }));
    } else {
        println!("{key}: {what}");
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Refused(format!("reading {}: {e}", path.display())))
}

/// A value on a line of its own, bytes as they are.
fn print_line(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.write_all(b"\n");
}

/// Bytes in JSON: a string when they are UTF-8, else `{"base64": ...}`.
fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => {
            use base64::Engine as _;
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A scan position given on the command line (hex).
#[derive(Clone, Debug, Default)]
pub struct Cursor(Vec<u8>);

fn parse_cursor(text: &str) -> Result<Cursor, String> {
    parse_hex(text).map(Cursor)
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("{text:?} is not hex (odd length)"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("{text:?} is not hex: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_hex() {
        let cursor = vec![0x00, 0xab, 0xff, b'k'];
        assert_eq!(parse_hex(&to_hex(&cursor)), Ok(cursor));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_hex(""), Ok(vec![]));
    }
}
