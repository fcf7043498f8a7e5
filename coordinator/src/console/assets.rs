//! The page, compiled into the binary: an operator needs nothing but a browser and the node.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Everything from this origin only: the browser itself refuses any external asset, and the
/// page cannot be framed.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, kind), (CONTENT_SECURITY_POLICY, CSP), (CACHE_CONTROL, "no-cache")], body)
}

/// `/`: the page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `/app.js`: plain JavaScript, no build step.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `/app.css`.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_nothing_outside_the_node() {
        for (name, text) in [("index.html", INDEX), ("app.js", SCRIPT), ("app.css", STYLE)] {
            assert!(!text.contains("http://") && !text.contains("https://"), "{name} names an external URL");
            assert!(!text.contains("@import"), "{name} imports");
        }
    }
}
