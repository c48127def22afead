//! `[[users]]`, `[[teams]]` and `[[orgs]]`: each entry checked as the grant
//! will build it, ids unique per kind, and a team's org defined in the file.
//!
//! # Which references are errors
//!
//! A `[[teams]]` entry's `org` must name an `[[orgs]]` entry of the same
//! file: the file describes its teams' tree whole, and a typo there would
//! leave the org's budget silently unenforced for the team. (A team under an
//! org made through the admin API is made through the admin API too.)
//!
//! A `[[keys]]` entry's `user` and `team` may name tenants the file does not
//! define: they may have been made through the admin API, and a key's
//! `team` was a label before tenants had records (spend reports still group
//! by it). The gateway logs a warning at start and reload for each one the
//! store has no record of (see `gateway.rs`), since such a key is charged to
//! its own budgets only.

use std::collections::HashSet;

use tollgate::auth::{TenantEntry, TenantKind};

use super::Config;

impl Config {
    /// The tables of tenants with their kinds, orgs first: the order they
    /// are applied in (a team's org exists before the team).
    pub fn tenant_tables(&self) -> [(TenantKind, &[TenantEntry]); 3] {
        [
            (TenantKind::Org, &self.orgs),
            (TenantKind::Team, &self.teams),
            (TenantKind::User, &self.users),
        ]
    }

    /// Checks every tenant entry; the message starts with `teams[2]…` (so
    /// that the line is added) and names the field.
    pub(super) fn validate_tenants(&self) -> Result<(), String> {
        for (kind, entries) in self.tenant_tables() {
            let table = table_of(kind);
            let mut ids = HashSet::new();
            for (i, entry) in entries.iter().enumerate() {
                if !ids.insert(entry.id.as_str()) {
                    return Err(format!(
                        "{table}[{i}].id: duplicate {kind} id {:?}",
                        entry.id
                    ));
                }
                let record = entry
                    .clone()
                    .into_record(kind)
                    .map_err(|e| format!("{table}[{i}]: {e}"))?;
                super::one_kind_of_money(&record.budgets, &record.scope())
                    .map_err(|e| format!("{table}[{i}]: {e}"))?;
            }
        }
        let orgs: HashSet<&str> = self.orgs.iter().map(|o| o.id.as_str()).collect();
        for (i, team) in self.teams.iter().enumerate() {
            if let Some(org) = team.org.as_deref().filter(|org| !orgs.contains(org)) {
                return Err(format!(
                    "teams[{i}].org: team {:?} names org {org:?}, which no [[orgs]] entry defines",
                    team.id
                ));
            }
        }
        Ok(())
    }
}

/// The table of `kind`'s entries: `users`, `teams` or `orgs`.
pub fn table_of(kind: TenantKind) -> &'static str {
    match kind {
        TenantKind::User => "users",
        TenantKind::Team => "teams",
        TenantKind::Org => "orgs",
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn tenants_load_and_their_errors_name_field_and_line() {
        let config = Config::from_toml(
            "[[orgs]]\nid = \"acme\"\nbudget_usd = 500\n\n[[teams]]\nid = \"research\"\norg = \"acme\"\nbudget_usd = \"50.00\"\nrequests_per_minute = 600\n\n[[users]]\nid = \"ann\"\nbalance_usd = 10\n\n[[keys]]\nid = \"a\"\nsecret = \"sk-a-0123456789\"\nuser = \"ann\"\nteam = \"research\"\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(config.teams[0].org.as_deref(), Some("acme"));
        let err = error_of("[[teams]]\nid = \"r\"\n\n[[teams]]\nid = \"r\"\n");
        assert!(
            err.contains("line 4") && err.contains("duplicate team id"),
            "{err}"
        );
        let err = error_of("[[orgs]]\nid = \"acme\"\n[[teams]]\nid = \"r\"\norg = \"acne\"\n");
        assert!(
            err.contains("line 3") && err.contains("teams[0].org"),
            "{err}"
        );
        let err = error_of("[[users]]\nid = \"ann\"\norg = \"acme\"\n");
        assert!(err.contains("line 1") && err.contains("`org`"), "{err}");
        let err = error_of("[[teams]]\nid = \"r\"\nbudget_usd = 1\nbalance_usd = 1\n");
        assert!(err.contains("line 1") && err.contains("both set"), "{err}");
        let err = error_of("[[orgs]]\nid = \"o\"\nrequests_per_minute = 0\n");
        assert!(
            err.contains("orgs[0]") && err.contains("requests_per_minute"),
            "{err}"
        );
        // The parser places an unknown field at its entry's header.
        let err = error_of("[[teams]]\nid = \"r\"\nsecret = \"x\"\n");
        assert!(
            err.contains("line 1") && err.contains("unknown field `secret`"),
            "{err}"
        );
    }
}
