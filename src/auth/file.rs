//! Key files: JSON or TOML lists of [`KeyEntry`] (and of the users, teams
//! and orgs they belong to, [`TenantEntry`]), validated as a whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::entry::{InvalidKeyEntry, KeyEntry, TenantEntry, strip_position};
use super::{KeyHash, KeyRecord, TenantKind, TenantRecord};

/// A validated list of keys, from a file or from entries embedded in other
/// configuration.
///
/// JSON files hold an array of entries or `{"keys": [...]}`; TOML files hold
/// `[[keys]]` tables. Fields are those of [`KeyEntry`]. Either may also hold
/// `users`, `teams` and `orgs` (`[[teams]]` tables), the tenants the keys
/// name, with the fields of [`TenantEntry`]; see [`KeyFile::tenants`].
///
/// ```
/// use tollgate::auth::{KeyFile, KeyHash};
///
/// let file = KeyFile::from_toml(r#"
/// [[keys]]
/// id = "alice"
/// secret = "sk-dev-alice"          # plaintext: local development only
/// models = ["gpt-4o*"]
///
/// [[keys]]
/// id = "ci"
/// secret_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// requests_per_minute = 60
/// "#)?;
/// assert_eq!(file.records()[0].secret_hash, KeyHash::of("sk-dev-alice"));
/// assert_eq!(file.records()[1].id, "ci");
///
/// let err = KeyFile::from_toml("[[keys]]\nid = \"x\"\nsecret = \"s\"\nrevoked = \"no\"\n").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "TOML key file, line 4: field `revoked`: invalid type: string \"no\", expected a boolean",
/// );
/// # Ok::<_, tollgate::auth::KeyFileError>(())
/// ```
///
/// A team shared by two keys, loaded into a store (each request of either
/// key then counts against the team's limit and budget):
///
/// ```
/// use tollgate::auth::{KeyFile, TenantKind};
/// use tollgate::store::memory::MemoryKeyStore;
///
/// let file = KeyFile::from_toml(r#"
/// [[teams]]
/// id = "research"
/// requests_per_minute = 600
/// budget_usd = 50
///
/// [[keys]]
/// id = "alice"
/// secret = "sk-dev-alice"
/// team = "research"
///
/// [[keys]]
/// id = "bob"
/// secret = "sk-dev-bob"
/// team = "research"
/// "#)?;
/// assert_eq!(file.tenants()[0].kind, TenantKind::Team);
/// let store = MemoryKeyStore::from_file(file)?;
/// assert!(store.get_tenant(&TenantKind::Team.scope("research")).is_some());
/// # Ok::<_, tollgate::auth::KeyFileError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyFile {
    records: Vec<KeyRecord>,
    tenants: Vec<TenantRecord>,
}

/// A key file that cannot be used. Messages name the file, line (TOML) or
/// entry, key and field, and never repeat a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("could not read key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's extension is neither `.json` nor `.toml`.
    #[error("cannot tell the format of key file {}: name it *.json or *.toml", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid JSON or TOML, has an unknown field, or a value
    /// of the wrong type.
    #[error("{format} key file{}: {message}", at_line(*line))]
    Syntax {
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The line, where known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An entry's values do not make a valid key.
    #[error("entry {index}{}: {source}", at_line(*line))]
    Entry {
        /// Position of the entry in the list, from 1.
        index: usize,
        /// The entry's line (TOML).
        line: Option<usize>,
        /// What is wrong.
        source: InvalidKeyEntry,
    },
    /// Two entries have the same id.
    #[error("entry {index}{}: duplicate key id `{id}` (first used by entry {first})", at_line(*line))]
    DuplicateId {
        /// The id.
        id: String,
        /// Position of the second entry, from 1.
        index: usize,
        /// Position of the first entry, from 1.
        first: usize,
        /// The second entry's line (TOML).
        line: Option<usize>,
    },
    /// Two entries have the same secret.
    #[error("keys `{id}` and `{other}` have the same secret")]
    DuplicateSecret {
        /// The later key.
        id: String,
        /// The earlier key.
        other: String,
    },
    /// A user, team or org entry's values do not make a valid tenant (the
    /// message names its kind, id and field).
    #[error("{kind}s entry {index}{}: {source}", at_line(*line))]
    Tenant {
        /// User, team or org.
        kind: TenantKind,
        /// Position of the entry in its list, from 1.
        index: usize,
        /// The entry's line (TOML).
        line: Option<usize>,
        /// What is wrong.
        source: InvalidKeyEntry,
    },
    /// Two tenants of one kind have the same id.
    #[error("{kind}s entry {index}{}: duplicate {kind} id `{id}` (first used by entry {first})", at_line(*line))]
    DuplicateTenant {
        /// User, team or org.
        kind: TenantKind,
        /// The id.
        id: String,
        /// Position of the second entry, from 1.
        index: usize,
        /// Position of the first entry, from 1.
        first: usize,
        /// The second entry's line (TOML).
        line: Option<usize>,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tables<K, T> {
    #[serde(default = "Vec::new")]
    keys: Vec<K>,
    #[serde(default = "Vec::new")]
    users: Vec<T>,
    #[serde(default = "Vec::new")]
    teams: Vec<T>,
    #[serde(default = "Vec::new")]
    orgs: Vec<T>,
}

/// Entries, each with where it starts in a TOML file's text.
type Located<E> = Vec<(E, Option<usize>)>;

impl<K, T> Tables<K, T> {
    /// The keys, and the tenants by kind, each entry located by `locate`.
    fn located(
        self,
        locate: impl Fn(K) -> (KeyEntry, Option<usize>),
        locate_tenant: impl Fn(T) -> (TenantEntry, Option<usize>),
    ) -> (Located<KeyEntry>, Vec<(TenantKind, Located<TenantEntry>)>) {
        let tenants = |v: Vec<T>| v.into_iter().map(&locate_tenant).collect();
        (
            self.keys.into_iter().map(locate).collect(),
            vec![
                (TenantKind::User, tenants(self.users)),
                (TenantKind::Team, tenants(self.teams)),
                (TenantKind::Org, tenants(self.orgs)),
            ],
        )
    }
}

/// The line of an entry that starts at a byte offset, or (given a field's
/// name) of that field.
type LineOf<'a> = &'a dyn Fn(usize, Option<&str>) -> usize;

impl KeyFile {
    /// Reads and validates a key file, its format told by its extension.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyFile, KeyFileError> {
        let path = path.as_ref();
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse = match extension.as_deref() {
            Some("json") => KeyFile::from_json,
            Some("toml") => KeyFile::from_toml,
            _ => {
                return Err(KeyFileError::UnknownFormat {
                    path: path.to_owned(),
                });
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&text)
    }

    /// Parses a JSON key file: an array of entries, or `{"keys": [...]}`
    /// (with `"users"`, `"teams"` and `"orgs"` arrays beside it, if any).
    pub fn from_json(text: &str) -> Result<KeyFile, KeyFileError> {
        let syntax = |e: serde_json::Error| KeyFileError::Syntax {
            format: "JSON",
            line: (e.line() > 0).then_some(e.line()),
            message: strip_position(&e),
        };
        if text.trim_start().starts_with('[') {
            let entries = serde_json::from_str::<Vec<KeyEntry>>(text).map_err(syntax)?;
            return KeyFile::from_entries(entries);
        }
        let file = serde_json::from_str::<Tables<KeyEntry, TenantEntry>>(text).map_err(syntax)?;
        let (keys, tenants) = file.located(|e| (e, None), |e| (e, None));
        KeyFile::validate(keys, tenants, &|_, _| 1)
    }

    /// Parses a TOML key file of `[[keys]]` tables (and `[[users]]`,
    /// `[[teams]]`, `[[orgs]]`).
    pub fn from_toml(text: &str) -> Result<KeyFile, KeyFileError> {
        let file: Tables<toml::Spanned<KeyEntry>, toml::Spanned<TenantEntry>> =
            toml::from_str(text).map_err(|e| {
                // toml appends the key path ("in `revoked`"); the message names
                // the field already.
                let message = e.message().trim_end();
                let message = message.split("\nin `").next().unwrap_or(message);
                let line = e.span().map(|span| field_line(text, span.start, message));
                KeyFileError::Syntax {
                    format: "TOML",
                    line,
                    message: message.to_owned(),
                }
            })?;
        let (keys, tenants) = file.located(unspan, unspan);
        // An error naming a field points at the field's own line rather
        // than the entry's.
        let line = |start: usize, field: Option<&str>| {
            let named = field.map(|f| format!("field `{f}`"));
            field_line(text, start, named.as_deref().unwrap_or(""))
        };
        KeyFile::validate(keys, tenants, &line)
    }

    /// Validates entries embedded in other configuration (a gateway's
    /// `[[keys]]` table), as a key file's would be.
    pub fn from_entries(
        entries: impl IntoIterator<Item = KeyEntry>,
    ) -> Result<KeyFile, KeyFileError> {
        let keys = entries.into_iter().map(|entry| (entry, None)).collect();
        KeyFile::validate(keys, Vec::new(), &|_, _| 1)
    }

    fn validate(
        keys: Located<KeyEntry>,
        tables: Vec<(TenantKind, Located<TenantEntry>)>,
        line_of: LineOf<'_>,
    ) -> Result<KeyFile, KeyFileError> {
        let mut records: Vec<KeyRecord> = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut hashes: HashMap<KeyHash, usize> = HashMap::new();
        for (i, (entry, start)) in keys.into_iter().enumerate() {
            let index = i + 1;
            let line = |field| start.map(|s| line_of(s, field));
            if let Some(first) = ids.insert(entry.id.clone(), index) {
                return Err(KeyFileError::DuplicateId {
                    id: entry.id,
                    index,
                    first,
                    line: line(None),
                });
            }
            let record = entry.into_record().map_err(|source| KeyFileError::Entry {
                index,
                line: line(Some(source.field())),
                source,
            })?;
            if let Some(other) = hashes.insert(record.secret_hash, records.len()) {
                return Err(KeyFileError::DuplicateSecret {
                    id: record.id,
                    other: records[other].id.clone(),
                });
            }
            records.push(record);
        }
        let mut tenants = Vec::new();
        for (kind, entries) in tables {
            let mut ids: HashMap<String, usize> = HashMap::new();
            for (i, (entry, start)) in entries.into_iter().enumerate() {
                let index = i + 1;
                let line = |field| start.map(|s| line_of(s, field));
                if let Some(first) = ids.insert(entry.id.clone(), index) {
                    return Err(KeyFileError::DuplicateTenant {
                        kind,
                        id: entry.id,
                        index,
                        first,
                        line: line(None),
                    });
                }
                let record = entry
                    .into_record(kind)
                    .map_err(|source| KeyFileError::Tenant {
                        kind,
                        index,
                        line: line(Some(source.field())),
                        source,
                    })?;
                tenants.push(record);
            }
        }
        Ok(KeyFile { records, tenants })
    }

    /// The users, teams and orgs of the file (users first, then teams, then
    /// orgs, each in file order).
    pub fn tenants(&self) -> &[TenantRecord] {
        &self.tenants
    }

    /// The records, in file order.
    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }
}

/// The records, in file order.
impl IntoIterator for KeyFile {
    type Item = KeyRecord;
    type IntoIter = std::vec::IntoIter<KeyRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.records.into_iter()
    }
}

/// A TOML entry, and where it starts.
fn unspan<E>(spanned: toml::Spanned<E>) -> (E, Option<usize>) {
    let start = spanned.span().start;
    (spanned.into_inner(), Some(start))
}

/// The line of the field an error names, looked for from `start` (where
/// toml points: the entry's table) to the next table header; the line of
/// `start` when the field is not found there.
fn field_line(text: &str, start: usize, message: &str) -> usize {
    let first = text.get(..start).map_or(1, |t| t.matches('\n').count() + 1);
    let field = ["field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let Some(field) = field else {
        return first;
    };
    for (i, line) in text.lines().enumerate().skip(first - 1) {
        let line = line.trim_start();
        if i >= first && line.starts_with('[') {
            break;
        }
        // `field = …`, possibly inside an inline table on this line.
        let found = line.match_indices(field).any(|(at, _)| {
            let before = line[..at].trim_end();
            let after = line[at + field.len()..].trim_start();
            (before.is_empty() || before.ends_with(['{', ','])) && after.starts_with('=')
        });
        if found {
            return i + 1;
        }
    }
    first
}
