//! Mints an API key: prints the secret (once) for its owner, and the entry to
//! add to a key file, which holds only the secret's SHA-256.
//!
//! ```sh
//! cargo run --example mint_key                       # random id
//! cargo run --example mint_key -- alice "Alice's laptop" --json
//! ```
//!
//! Then load the file with `MemoryKeyStore::load("keys.toml")`.

use std::process::ExitCode;

use tollgate::auth::{KeyEntry, KeyRecord};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = match args.iter().position(|a| a == "--json") {
        Some(at) => {
            args.remove(at);
            true
        }
        None => false,
    };
    if args.iter().any(|a| a.starts_with('-')) || args.len() > 2 {
        eprintln!("usage: mint_key [ID [NAME]] [--json]");
        return ExitCode::FAILURE;
    }
    let minted = match args.first() {
        Some(id) => KeyRecord::generate_with_id(id.clone()),
        None => KeyRecord::generate(),
    };
    let (secret, mut record) = match minted {
        Ok(minted) => minted,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(name) = args.get(1) {
        record = record.with_name(name.clone());
    }
    let entry = KeyEntry::from_record(&record);
    // Validate what we print, as the loader will.
    if let Err(e) = entry.clone().into_record() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }

    // stdout: the secret alone on the first line (`mint_key | head -1`), then
    // the key file entry. Guidance goes to stderr.
    println!("{}", secret.expose());
    let line = if json {
        serde_json::to_string(&entry).map_err(|e| e.to_string())
    } else {
        toml::to_string(&KeysTable { keys: vec![entry] }).map_err(|e| e.to_string())
    };
    match line {
        Ok(line) => {
            eprintln!("\n# Give the key above to its owner; it is not stored anywhere.");
            eprintln!("# Add this to your key file:\n");
            println!("{}", line.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(serde::Serialize)]
struct KeysTable {
    keys: Vec<KeyEntry>,
}
