//! The config the admin and reload tests share: an admin key, two priced
//! models and a few keys in different states.

use crate::gateway_support::Gateway;

pub const ADMIN: &str = "sk-admin-test-0123456789";
pub const MODEL: &str = "llama3:8b-instruct-q8_0";

/// A config with an admin key, two models and a few keys; `price` is the
/// first model's input price per million (output: twice that).
pub fn config(price: f64) -> String {
    format!(
        r#"
upstream = "mock"
admin_keys = ["{ADMIN}"]
request_timeout_secs = 10
stream_idle_timeout_secs = 10

[[models]]
name = "{MODEL}"
input_usd_per_million = {price}
output_usd_per_million = {output}
max_output_tokens = 100

[[models]]
name = "other-model"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[keys]]
id = "tenant"
secret = "sk-tenant-0123456789"
requests_per_minute = 5
budget_usd = 1.0

[[keys]]
id = "prepaid"
secret = "sk-prepaid-0123456789"
balance_usd = 0.0

[[keys]]
id = "expired"
secret = "sk-expired-0123456789"
expires_at = "2020-01-01T00:00:00Z"
"#,
        output = price * 2.0
    )
}

pub fn admin_url(gateway: &Gateway, path: &str) -> String {
    gateway.url(&format!("/admin{path}"))
}
