//! Where a ledger's books live: [`LedgerPlacement`] (which hash slot each
//! budget's keys are in), and the key names of one call.

use std::fmt;
use std::sync::Arc;

use crate::budget::{BudgetScope, BudgetSpec};
use crate::store::StoreError;

/// Which hash slot each budget's books are kept in: the layout of a
/// [`RedisLedger`](super::RedisLedger) on one Redis or on a Redis Cluster.
///
/// A Redis Cluster runs a script only if every key it touches is in one
/// hash slot, and a reservation touches the books of every budget of its
/// request (key, user, team, org), their holds and the request's spend
/// aggregates. The keys of a call therefore share one hash tag, `{…}`, and
/// the placement says which.
///
/// ```
/// use tollgate::budget::BudgetScope;
/// use tollgate::store::redis::LedgerPlacement;
///
/// // Keys and teams of the org `acme` are booked in its slot; every other
/// // scope is its own tenant.
/// let placement = LedgerPlacement::by_tenant(|scope: &BudgetScope| match scope {
///     BudgetScope::Key(id) if id.starts_with("acme-") => BudgetScope::Org("acme".into()),
///     BudgetScope::Team(id) if id == "research" => BudgetScope::Org("acme".into()),
///     other => other.clone(),
/// });
/// # let _ = placement;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum LedgerPlacement {
    /// No hash tag: `<prefix>budget:<scope>`, the names the ledger has
    /// always used on a single Redis (the default there). Not for a
    /// cluster.
    #[default]
    Untagged,
    /// Every key under the hash tag `{ledger}` (the default on a cluster):
    /// correct on any cluster, where one node then does all the ledger's
    /// work (as a single Redis would).
    OneSlot,
    /// Each budget in the slot of its top-most tenant, as the function names
    /// it for the budget's scope (for a key in an org: the org; else its
    /// team, else its user, else the key itself): tenants spread over the
    /// cluster. The function must give every scope of one request the same
    /// tenant, and give each scope always the same one: a request whose
    /// budgets belong to different tenants is refused with a
    /// [`StoreError`], and a scope moved to another tenant starts new books
    /// there (its spend so far stays in the old ones).
    ByTenant(Arc<dyn Fn(&BudgetScope) -> BudgetScope + Send + Sync>),
}

impl LedgerPlacement {
    /// [`LedgerPlacement::ByTenant`] with `tenant_of`.
    pub fn by_tenant(
        tenant_of: impl Fn(&BudgetScope) -> BudgetScope + Send + Sync + 'static,
    ) -> Self {
        LedgerPlacement::ByTenant(Arc::new(tenant_of))
    }

    /// The hash tag of a call touching `scopes` (`None`: untagged); a
    /// call with no scope goes to the `ledger` tag.
    pub(super) fn tag<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a BudgetScope>,
    ) -> Result<Option<String>, StoreError> {
        let tenant_of = match self {
            LedgerPlacement::Untagged => return Ok(None),
            LedgerPlacement::OneSlot => return Ok(Some(ONE_SLOT.to_owned())),
            LedgerPlacement::ByTenant(tenant_of) => tenant_of,
        };
        let mut tenant: Option<BudgetScope> = None;
        for scope in scopes {
            let of = tenant_of(scope);
            match &tenant {
                None => tenant = Some(of),
                Some(first) if *first == of => {}
                Some(first) => {
                    return Err(StoreError::Unavailable(format!(
                        "the budgets of one request belong to the tenants `{}` and `{}`: \
                         on a Redis Cluster they must share one (see LedgerPlacement)",
                        first.id().escape_debug(),
                        of.id().escape_debug()
                    )));
                }
            }
        }
        Ok(Some(tenant.map_or_else(|| ONE_SLOT.to_owned(), |t| t.id())))
    }

    /// Whether tenants are spread over several tags (whose list the
    /// ledger keeps, for spend reports across tenants).
    pub(super) fn is_by_tenant(&self) -> bool {
        matches!(self, LedgerPlacement::ByTenant(_))
    }
}

impl fmt::Debug for LedgerPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LedgerPlacement::Untagged => "Untagged",
            LedgerPlacement::OneSlot => "OneSlot",
            LedgerPlacement::ByTenant(_) => "ByTenant(..)",
        })
    }
}

/// The tag of [`LedgerPlacement::OneSlot`], of calls with no scope, and of
/// the list of tenants.
pub(super) const ONE_SLOT: &str = "ledger";

/// The key names of one call: everything under `<prefix>` (untagged) or
/// `<prefix>{tag}:`, so that every key the call's script touches, declared
/// or reached through a name it holds, is in one slot.
pub(super) struct Books {
    prefix: String,
}

impl Books {
    pub(super) fn new(key_prefix: &str, tag: Option<&str>) -> Books {
        let prefix = match tag {
            Some(tag) => format!("{key_prefix}{{{tag}}}:"),
            None => key_prefix.to_owned(),
        };
        Books { prefix }
    }

    fn name(&self, parts: &[&str]) -> String {
        std::iter::once(&*self.prefix)
            .chain(parts.iter().copied())
            .collect()
    }

    /// A budget's books (a hash).
    pub(super) fn budget(&self, spec: &BudgetSpec) -> String {
        self.name(&["budget:", &spec.id()])
    }

    /// The holds, by lease expiry (a sorted set).
    pub(super) fn holds(&self) -> String {
        self.name(&["holds"])
    }

    /// The prefix of a hold (a hash), followed by its reservation id.
    pub(super) fn hold_prefix(&self) -> String {
        self.name(&["hold:"])
    }

    pub(super) fn hold(&self, id: &str) -> String {
        self.name(&["hold:", id])
    }

    /// The reservation id sequence.
    pub(super) fn sequence(&self) -> String {
        self.name(&["ledger:seq"])
    }

    /// The prefix of the spend aggregates.
    pub(super) fn spend_prefix(&self) -> String {
        self.name(&["spend:"])
    }

    /// The scopes with spend (a set).
    pub(super) fn spend_scopes(&self) -> String {
        self.name(&["spend-scopes"])
    }

    /// The marker of a top-up's idempotency key.
    pub(super) fn top_up(&self, budget: &BudgetSpec, key: &str) -> String {
        self.name(&["top-up:", &budget.id(), ":", key])
    }

    /// The list of tenant tags with spend (kept under the `ledger` tag).
    pub(super) fn tenants(key_prefix: &str) -> String {
        Books::new(key_prefix, Some(ONE_SLOT)).name(&["tenants"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Money, Period};

    #[test]
    fn untagged_names_are_the_single_redis_names() {
        let books = Books::new("tollgate:", None);
        let spec = BudgetSpec::budget(BudgetScope::Team("t".into()), Money::ZERO, Period::Daily);
        assert_eq!(books.budget(&spec), "tollgate:budget:team:t");
        assert_eq!(books.holds(), "tollgate:holds");
        assert_eq!(books.hold("7"), "tollgate:hold:7");
        assert_eq!(books.sequence(), "tollgate:ledger:seq");
        assert_eq!(books.spend_scopes(), "tollgate:spend-scopes");
        assert_eq!(books.top_up(&spec, "k"), "tollgate:top-up:team:t:k");
        let tagged = Books::new("tollgate:", Some("org:acme"));
        assert_eq!(tagged.budget(&spec), "tollgate:{org:acme}:budget:team:t");
        assert_eq!(tagged.hold_prefix(), "tollgate:{org:acme}:hold:");
        assert_eq!(Books::tenants("gw:"), "gw:{ledger}:tenants");
    }

    #[test]
    fn a_request_is_booked_under_its_one_tenant() {
        let key = |id: &str| BudgetScope::Key(id.into());
        let org = BudgetScope::Org("acme".into());
        let team = BudgetScope::Team("t".into());
        assert_eq!(LedgerPlacement::Untagged.tag([&key("a")]), Ok(None));
        assert_eq!(
            LedgerPlacement::OneSlot.tag([&key("a"), &org]),
            Ok(Some("ledger".into()))
        );
        let by_tenant = LedgerPlacement::by_tenant(|scope| match scope {
            BudgetScope::Key(id) if id == "loner" => scope.clone(),
            _ => BudgetScope::Org("acme".into()),
        });
        assert_eq!(
            by_tenant.tag([&key("a"), &team, &org]),
            Ok(Some("org:acme".into()))
        );
        assert_eq!(by_tenant.tag([&key("loner")]), Ok(Some("key:loner".into())));
        assert_eq!(by_tenant.tag([]), Ok(Some("ledger".into())));
        let mixed = by_tenant.tag([&key("a"), &key("loner")]);
        assert!(
            matches!(&mixed, Err(StoreError::Unavailable(m)) if m.contains("`org:acme` and `key:loner`")),
            "{mixed:?}"
        );
    }
}
