//! Turning a Places answer into the legacy Nearby Search JSON that WHATSAT returns.

use serde_json::{Map, Value, json};

use super::PlacesError;
use super::response::Response;

/// The legacy JSON for a New API (`searchNearby`) response, with at most `bound` results.
///
/// Each place becomes a legacy result with the legacy key names, in the legacy (alphabetical)
/// key order: `business_status`, `geometry.location.{lat,lng}`, `name`, `place_id`, `rating`,
/// `types`, `user_ratings_total`, `vicinity`; a field Google did not send is left out.
pub fn new_to_legacy(response: &Response, bound: u8) -> Result<Vec<u8>, PlacesError> {
    if response.status != 200 {
        return Err(PlacesError::Status(response.status, new_error_status(&response.body)));
    }
    let v: Value = serde_json::from_slice(&response.body).map_err(|e| PlacesError::BadJson(e.to_string()))?;
    let Value::Object(top) = v else { return Err(PlacesError::BadJson("not a JSON object".into())) };
    let places = match top.get("places") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(PlacesError::BadJson("`places` is not an array".into())),
    };
    let mut results = Vec::with_capacity(places.len().min(usize::from(bound)));
    for place in places.iter().take(usize::from(bound)) {
        let Value::Object(p) = place else {
            return Err(PlacesError::BadJson("a place is not an object".into()));
        };
        let mut r = Map::new();
        if let Some(s) = p.get("businessStatus") {
            r.insert("business_status".into(), s.clone());
        }
        if let Some(Value::Object(loc)) = p.get("location") {
            let (Some(lat), Some(lng)) = (loc.get("latitude"), loc.get("longitude")) else {
                return Err(PlacesError::BadJson("a place's location lacks latitude or longitude".into()));
            };
            r.insert("geometry".into(), json!({ "location": { "lat": lat, "lng": lng } }));
        }
        if let Some(name) = p.get("displayName").and_then(|d| d.get("text")) {
            r.insert("name".into(), name.clone());
        }
        for (new, legacy) in [
            ("id", "place_id"),
            ("rating", "rating"),
            ("types", "types"),
            ("userRatingCount", "user_ratings_total"),
            ("shortFormattedAddress", "vicinity"),
        ] {
            if let Some(v) = p.get(new) {
                r.insert(legacy.into(), v.clone());
            }
        }
        // Keep the legacy order (alphabetical) whatever order the fields were inserted in.
        r.sort_keys();
        results.push(Value::Object(r));
    }
    let status = if results.is_empty() { "ZERO_RESULTS" } else { "OK" };
    Ok(pretty(&json!({ "html_attributions": [], "results": results, "status": status })))
}

/// The legacy answer with at most `bound` results: Google's bytes unchanged when they already
/// fit, otherwise re-serialised with Google's key order kept.
pub fn legacy_cut(response: &Response, bound: u8) -> Result<Vec<u8>, PlacesError> {
    if response.status != 200 {
        return Err(PlacesError::Status(response.status, None));
    }
    let v: Value = serde_json::from_slice(&response.body).map_err(|e| PlacesError::BadJson(e.to_string()))?;
    let Value::Object(mut top) = v else { return Err(PlacesError::BadJson("not a JSON object".into())) };
    match top.get("status").and_then(Value::as_str) {
        Some("OK" | "ZERO_RESULTS") => {}
        Some(other) => return Err(PlacesError::Denied(other.to_owned())),
        None => return Err(PlacesError::BadJson("no `status`".into())),
    }
    let Some(Value::Array(results)) = top.get_mut("results") else {
        return Err(PlacesError::BadJson("`results` is not an array".into()));
    };
    if results.len() <= usize::from(bound) {
        return Ok(response.body.clone());
    }
    results.truncate(usize::from(bound));
    Ok(pretty(&Value::Object(top)))
}

/// Google's error status (`PERMISSION_DENIED`, ...) in a New API error body, if there is one.
fn new_error_status(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("status")?.as_str().map(str::to_owned)
}

/// JSON with three-space indentation, the layout of Google's legacy answers.
fn pretty(v: &Value) -> Vec<u8> {
    use serde::Serialize;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"   "),
    );
    // Serialising a `Value` into a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/places/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn ok(body: Vec<u8>) -> Response {
        Response { status: 200, body, keep_alive: true }
    }

    #[test]
    fn new_fixture_converts_to_the_legacy_fixture() {
        let got: Value =
            serde_json::from_slice(&new_to_legacy(&ok(fixture("new-searchnearby-sydney.json")), 20).unwrap())
                .unwrap();
        let want: Value = serde_json::from_slice(&fixture("legacy-nearbysearch-sydney.json")).unwrap();
        assert_eq!(got["status"], "OK");
        assert_eq!(got["html_attributions"], json!([]));
        let (got, want) = (got["results"].as_array().unwrap(), want["results"].as_array().unwrap());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            for key in
                ["business_status", "name", "place_id", "rating", "types", "user_ratings_total", "vicinity"]
            {
                assert_eq!(g.get(key), w.get(key), "{key} of {}", w["name"]);
            }
            assert_eq!(g["geometry"]["location"], w["geometry"]["location"]);
            let keys: Vec<&String> = g.as_object().unwrap().keys().collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "legacy key order");
        }
    }

    #[test]
    fn new_cut_to_bound_and_empty_is_zero_results() {
        let got: Value =
            serde_json::from_slice(&new_to_legacy(&ok(fixture("new-searchnearby-sydney.json")), 3).unwrap())
                .unwrap();
        assert_eq!(got["results"].as_array().unwrap().len(), 3);
        let got: Value = serde_json::from_slice(&new_to_legacy(&ok(b"{}".to_vec()), 3).unwrap()).unwrap();
        assert_eq!(got["status"], "ZERO_RESULTS");
        assert_eq!(got["results"], json!([]));
    }

    #[test]
    fn new_errors_named() {
        let body = br#"{"error":{"code":403,"message":"API key not valid.","status":"PERMISSION_DENIED"}}"#;
        let r = Response { status: 403, body: body.to_vec(), keep_alive: true };
        assert_eq!(new_to_legacy(&r, 5), Err(PlacesError::Status(403, Some("PERMISSION_DENIED".into()))));
        assert!(matches!(new_to_legacy(&ok(b"{not json".to_vec()), 5), Err(PlacesError::BadJson(_))));
        assert!(matches!(new_to_legacy(&ok(b"[]".to_vec()), 5), Err(PlacesError::BadJson(_))));
        assert!(matches!(new_to_legacy(&ok(br#"{"places":{}}"#.to_vec()), 5), Err(PlacesError::BadJson(_))));
    }

    #[test]
    fn legacy_passed_through_or_cut_keeping_key_order() {
        let body = fixture("legacy-nearbysearch-sydney.json");
        assert_eq!(legacy_cut(&ok(body.clone()), 20).unwrap(), body, "fits: bytes unchanged");
        let cut = legacy_cut(&ok(body.clone()), 2).unwrap();
        let v: Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 2);
        let orig: Value = serde_json::from_slice(&body).unwrap();
        let keys = |v: &Value| v["results"][0].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&v), keys(&orig));
        let top: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(top, ["html_attributions", "results", "status"]);
    }

    #[test]
    fn legacy_error_statuses_refused() {
        for s in ["REQUEST_DENIED", "OVER_QUERY_LIMIT", "INVALID_REQUEST", "UNKNOWN_ERROR"] {
            let body =
                format!(r#"{{"html_attributions":[],"results":[],"status":"{s}","error_message":"x"}}"#);
            assert_eq!(legacy_cut(&ok(body.into_bytes()), 5), Err(PlacesError::Denied(s.into())));
        }
        let zero = br#"{"html_attributions":[],"results":[],"status":"ZERO_RESULTS"}"#.to_vec();
        assert_eq!(legacy_cut(&ok(zero.clone()), 5).unwrap(), zero);
        assert!(matches!(
            legacy_cut(&Response { status: 500, body: vec![], keep_alive: false }, 5),
            Err(PlacesError::Status(500, None))
        ));
    }
}
