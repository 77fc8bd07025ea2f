//! Answers: the reply of a well-behaved Places to a request (routing, key, mask and query checks,
//! Google's error shapes), then bent by `--status` and `--garbage`.

use serde_json::{Value, json};

use crate::cli::{Options, Size};
use crate::json::{pretty_legacy, pretty_new};
use crate::mask::{MaskError, parse_field_mask};
use crate::output::printable;
use crate::pad::{padded_legacy, padded_new};
use crate::places::{Place, synthetic_places};
use crate::query::{param, parse_legacy_query, parse_new_body, query_params};

/// The New API path (after any base prefix).
const NEW_PATH: &str = "/v1/places:searchNearby";
/// The legacy API path (after any base prefix).
const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";

/// A request as the API layer sees it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) api_key: Option<Vec<u8>>,
    pub(crate) field_mask: Option<Vec<u8>>,
    pub(crate) body: Vec<u8>,
}

/// A status and a JSON (or, with `--garbage`, not JSON) body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// The google.rpc status Google pairs with an HTTP status.
fn rpc_status(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 | 413 | 431 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// A New-API-shaped error: `{"error": {"code", "message", "status"}}`.
pub(crate) fn google_error(status: u16, message: &str) -> Reply {
    Reply {
        status,
        body: pretty_new(
            &json!({ "error": { "code": status, "message": message, "status": rpc_status(status) } }),
        ),
    }
}

fn key_denied() -> Reply {
    let mut v = json!({ "error": {
        "code": 403,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "PERMISSION_DENIED",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": { "service": "places.googleapis.com" },
        }],
    }});
    // Keep `details` last, where Google puts it.
    if let Some(Value::Object(e)) = v.get_mut("error") {
        e.sort_keys();
        if let Some(d) = e.shift_remove("details") {
            e.insert("details".into(), d);
        }
    }
    Reply { status: 403, body: pretty_new(&v) }
}

fn not_found(path: &str) -> Reply {
    google_error(404, &format!("The requested URL {} was not found on this server.", printable(path)))
}

/// A legacy answer with no results: `REQUEST_DENIED`, `INVALID_REQUEST`, ...
fn legacy_status(status: &str, message: &str) -> Reply {
    Reply {
        status: 200,
        body: pretty_legacy(&json!({
            "error_message": message,
            "html_attributions": [],
            "results": [],
            "status": status,
        })),
    }
}

/// The answer to `req`, honouring `--status` and `--garbage`.
pub(crate) fn respond(req: &Request, o: &Options) -> Reply {
    let mut reply = match o.status {
        Some(code) => {
            google_error(code, &format!("places-stub answers every request with HTTP {code} (--status)."))
        }
        None => route(req, &o.key, o.size),
    };
    if o.garbage {
        reply.body =
            b"<!DOCTYPE html>\n<html><body><p>places-stub --garbage: this body is not JSON.</p>\n".to_vec();
        if o.status.is_none() {
            reply.status = 200;
        }
    }
    reply
}

/// The answer of a well-behaved Places to `req`, successful answers made `size`.
fn route(req: &Request, key: &str, size: Size) -> Reply {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let params = query_params(query);
    if path.ends_with(NEW_PATH) && req.method == "POST" {
        new_api(req, &params, key, size)
    } else if path.ends_with(LEGACY_PATH) && req.method == "GET" {
        legacy_api(&params, key, size)
    } else {
        not_found(path)
    }
}

fn new_api(req: &Request, params: &[(String, String)], key: &str, size: Size) -> Reply {
    // Google takes the key from the header or, failing that, from `?key=`.
    let given = req.api_key.as_deref().or_else(|| param(params, "key").map(str::as_bytes));
    if given != Some(key.as_bytes()) {
        return key_denied();
    }
    let mask = req.field_mask.as_deref().map(|m| std::str::from_utf8(m).unwrap_or("\u{fffd}")).unwrap_or("");
    let mask = match parse_field_mask(mask) {
        Ok(m) => m,
        Err(MaskError::Missing) => {
            return google_error(
                400,
                "FieldMask is a required parameter. See how to provide it at \
                 https://developers.google.com/maps/documentation/places/web-service/choose-fields",
            );
        }
        Err(MaskError::Unknown(path)) => {
            return google_error(
                400,
                &format!(
                    "Error expanding 'fields' parameter. Cannot find matching fields for path '{}'.",
                    printable(&path)
                ),
            );
        }
    };
    let q = match parse_new_body(&req.body) {
        Ok(q) => q,
        Err(message) => return google_error(400, &message),
    };
    if let Some(target) = size.target(q.radius_m) {
        return Reply { status: 200, body: padded_new(&q, &mask, target) };
    }
    let places: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, q.count)
        .iter()
        .map(|p| mask.apply(&p.new_json()))
        .collect();
    Reply { status: 200, body: pretty_new(&json!({ "places": places })) }
}

fn legacy_api(params: &[(String, String)], key: &str, size: Size) -> Reply {
    if param(params, "key") != Some(key) {
        return legacy_status("REQUEST_DENIED", "The provided API key is invalid.");
    }
    let q = match parse_legacy_query(params) {
        Ok(q) => q,
        Err(message) => return legacy_status("INVALID_REQUEST", &message),
    };
    if let Some(target) = size.target(q.radius_m) {
        return Reply { status: 200, body: padded_legacy(&q, target) };
    }
    let results: Vec<Value> =
        synthetic_places(q.lat, q.lng, q.radius_m, q.count).iter().map(Place::legacy_json).collect();
    Reply {
        status: 200,
        body: pretty_legacy(&json!({ "html_attributions": [], "results": results, "status": "OK" })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places::distance_m;
    use crate::testing::{BODY, LEGACY_RESULT_KEYS, json_of, keys, legacy_request, new_request, opts};

    #[test]
    fn new_api_checks_key_then_mask_then_body() {
        let o = opts();
        let mask = Some(herd::places::FIELD_MASK);
        for key in [None, Some("wrong-key"), Some("right-key "), Some("")] {
            let r = respond(&new_request(key, mask, BODY), &o);
            assert_eq!(r.status, 403, "{key:?}");
            let v = json_of(&r);
            assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
            assert_eq!(v["error"]["code"], 403);
            assert_eq!(v["error"]["message"], "API key not valid. Please pass a valid API key.");
        }
        // Wrong key and no mask: the key is checked first.
        assert_eq!(respond(&new_request(Some("wrong"), None, BODY), &o).status, 403);
        let r = respond(&new_request(Some("right-key"), None, BODY), &o);
        assert_eq!(r.status, 400);
        assert_eq!(json_of(&r)["error"]["status"], "INVALID_ARGUMENT");
        assert!(
            json_of(&r)["error"]["message"].as_str().unwrap().contains("FieldMask is a required parameter")
        );
        let r = respond(&new_request(Some("right-key"), Some("places.nope"), BODY), &o);
        assert_eq!((r.status, json_of(&r)["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
        let r = respond(&new_request(Some("right-key"), mask, "{not json"), &o);
        assert_eq!((r.status, json_of(&r)["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));

        let r = respond(&new_request(Some("right-key"), mask, BODY), &o);
        assert_eq!(r.status, 200);
        let v = json_of(&r);
        assert_eq!(keys(&v), ["places"]);
        assert_eq!(v["places"].as_array().unwrap().len(), 5);
        // The key may also come as `?key=`, as Google allows.
        let mut req = new_request(None, mask, BODY);
        req.target.push_str("?key=right-key");
        assert_eq!(respond(&req, &o).status, 200);
    }

    #[test]
    fn routes_methods_and_override_flags() {
        let o = opts();
        let mut get_new = new_request(Some("right-key"), Some("*"), BODY);
        get_new.method = "GET".into();
        let mut post_legacy = legacy_request("location=1,2&radius=5&key=right-key");
        post_legacy.method = "POST".into();
        let elsewhere = Request { target: "/maps/api/place/textsearch/json".into(), ..legacy_request("") };
        for req in [get_new, post_legacy, elsewhere] {
            let r = respond(&req, &o);
            assert_eq!(
                (r.status, json_of(&r)["error"]["status"].as_str()),
                (404, Some("NOT_FOUND")),
                "{req:?}"
            );
        }
        // A base prefix in front of either path is fine.
        let mut based = new_request(Some("right-key"), Some("*"), BODY);
        based.target = "/base/v1/places:searchNearby".into();
        assert_eq!(respond(&based, &o).status, 200);

        let status = Options { status: Some(429), ..opts() };
        let r = respond(&new_request(Some("right-key"), Some("*"), BODY), &status);
        assert_eq!(r.status, 429);
        assert_eq!(json_of(&r)["error"]["status"], "RESOURCE_EXHAUSTED");
        let r = respond(&legacy_request("location=1,2&radius=5&key=right-key"), &status);
        assert_eq!((r.status, json_of(&r)["error"]["code"].as_u64()), (429, Some(429)));

        let garbage = Options { garbage: true, ..opts() };
        for req in
            [new_request(Some("wrong"), None, ""), legacy_request("location=1,2&radius=5&key=right-key")]
        {
            let r = respond(&req, &garbage);
            assert_eq!(r.status, 200);
            assert!(serde_json::from_slice::<Value>(&r.body).is_err());
        }
    }

    #[test]
    fn legacy_answers_like_google() {
        let o = opts();
        let r = respond(&legacy_request("location=34.06893,-118.445127&radius=1000&key=right-key"), &o);
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"business_status\" : "), "{text}");
        let v = json_of(&r);
        assert_eq!(keys(&v), ["html_attributions", "results", "status"]);
        assert_eq!(v["status"], "OK");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 20);
        for result in results {
            assert_eq!(keys(result), LEGACY_RESULT_KEYS);
            let loc = &result["geometry"]["location"];
            assert_eq!(keys(loc), ["lat", "lng"]);
            let d =
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap());
            assert!(d < 1000.0);
        }
        for query in [
            "location=1,2&radius=5",
            "location=1,2&radius=5&key=wrong",
            "location=1,2&radius=5&KEY=right-key",
        ] {
            let v = json_of(&respond(&legacy_request(query), &o));
            assert_eq!(keys(&v), ["error_message", "html_attributions", "results", "status"]);
            assert_eq!(v["status"], "REQUEST_DENIED", "{query}");
            assert_eq!(v["error_message"], "The provided API key is invalid.");
            assert_eq!(v["results"], json!([]));
        }
        let r = respond(&legacy_request("radius=5&key=right-key"), &o);
        assert_eq!((r.status, json_of(&r)["status"].as_str()), (200, Some("INVALID_REQUEST")));
    }
}
