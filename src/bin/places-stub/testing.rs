//! What the unit tests of several modules share: options, requests, and JSON helpers.

use serde_json::Value;

use crate::answer::{Reply, Request};
use crate::cli::Options;
use crate::mask::parse_field_mask;
use crate::places::synthetic_places;

pub(crate) fn opts() -> Options {
    Options { key: "right-key".into(), ..Options::default() }
}

pub(crate) fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap()
}

pub(crate) const BODY: &str = r#"{"locationRestriction":{"circle":{"center":{"latitude":34.06893,"longitude":-118.445127},"radius":10000.0}},"maxResultCount":5}"#;

pub(crate) fn new_request(key: Option<&str>, mask: Option<&str>, body: &str) -> Request {
    Request {
        method: "POST".into(),
        target: "/v1/places:searchNearby".into(),
        api_key: key.map(|k| k.as_bytes().to_vec()),
        field_mask: mask.map(|m| m.as_bytes().to_vec()),
        body: body.as_bytes().to_vec(),
    }
}

pub(crate) fn legacy_request(query: &str) -> Request {
    Request {
        method: "GET".into(),
        target: format!("/maps/api/place/nearbysearch/json?{query}"),
        ..Request::default()
    }
}

pub(crate) fn masked(mask: &str) -> Value {
    let place = synthetic_places(1.0, 2.0, 100.0, 1).remove(0);
    parse_field_mask(mask).unwrap().apply(&place.new_json())
}

pub(crate) fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// The keys of a legacy result, in Google's (alphabetical) order.
pub(crate) const LEGACY_RESULT_KEYS: [&str; 8] =
    ["business_status", "geometry", "name", "place_id", "rating", "types", "user_ratings_total", "vicinity"];
