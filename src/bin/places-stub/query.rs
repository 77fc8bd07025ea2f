//! Request validation: a Nearby Search from a New API body or a legacy query string, checked as
//! Google checks it, with Google's messages.

use serde_json::Value;

use crate::output::printable;

/// Google's largest Nearby Search radius, in metres.
const MAX_RADIUS_M: f64 = 50_000.0;
/// Google's largest (and default) `maxResultCount`.
const MAX_RESULT_COUNT: usize = 20;
/// How many results a legacy answer holds (legacy takes no count).
const LEGACY_RESULTS: usize = 20;

/// Top-level fields a `searchNearby` body may carry (Google refuses any other name).
const NEW_BODY_FIELDS: &[&str] = &[
    "includedTypes",
    "excludedTypes",
    "includedPrimaryTypes",
    "excludedPrimaryTypes",
    "maxResultCount",
    "locationRestriction",
    "rankPreference",
    "languageCode",
    "regionCode",
    "routingParameters",
];

/// A validated Nearby Search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Nearby {
    pub(crate) lat: f64,
    pub(crate) lng: f64,
    pub(crate) radius_m: f64,
    pub(crate) count: usize,
}

fn check_point(lat: f64, lng: f64) -> Result<(), String> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(format!("Invalid latitude {lat}: must be between -90 and 90 degrees."));
    }
    if !(-180.0..=180.0).contains(&lng) {
        return Err(format!("Invalid longitude {lng}: must be between -180 and 180 degrees."));
    }
    Ok(())
}

fn check_radius(radius_m: f64) -> Result<(), String> {
    if radius_m > 0.0 && radius_m <= MAX_RADIUS_M {
        Ok(())
    } else {
        Err(format!("Invalid radius {radius_m}: must be greater than 0 and at most 50000 meters."))
    }
}

/// Validates a `searchNearby` JSON body as Google does; the error is Google's message.
pub(crate) fn parse_new_body(body: &[u8]) -> Result<Nearby, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}."))?;
    let Value::Object(top) = v else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    if let Some(k) = top.keys().find(|k| !NEW_BODY_FIELDS.contains(&k.as_str())) {
        return Err(format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."));
    }
    let circle = top
        .get("locationRestriction")
        .and_then(|l| l.get("circle"))
        .ok_or("Invalid request: locationRestriction.circle is required.")?;
    let center =
        circle.get("center").ok_or("Invalid request: locationRestriction.circle.center is required.")?;
    let number = |v: Option<&Value>, name: &str| {
        v.and_then(Value::as_f64).ok_or_else(|| format!("Invalid request: {name} must be a number."))
    };
    let lat = number(center.get("latitude"), "center.latitude")?;
    let lng = number(center.get("longitude"), "center.longitude")?;
    check_point(lat, lng)?;
    let radius_m = number(circle.get("radius"), "circle.radius")?;
    check_radius(radius_m)?;
    let count = match top.get("maxResultCount") {
        None => MAX_RESULT_COUNT,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=20) => n as usize,
            _ => return Err(format!("Invalid max_result_count {v}: must be between 1 and 20, inclusive.")),
        },
    };
    Ok(Nearby { lat, lng, radius_m, count })
}

/// Decodes `%XX` escapes and `+`; a malformed escape is kept as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' => match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded parameters of a query string, in order.
pub(crate) fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Validates a legacy query's `location` and `radius`; the error is the `error_message`.
pub(crate) fn parse_legacy_query(params: &[(String, String)]) -> Result<Nearby, String> {
    let location = param(params, "location").ok_or("Invalid request. Missing the 'location' parameter.")?;
    let bad_location = || format!("Invalid request. Invalid 'location' parameter {:?}.", printable(location));
    let (lat, lng) = location.split_once(',').ok_or_else(bad_location)?;
    let (Ok(lat), Ok(lng)) = (lat.trim().parse::<f64>(), lng.trim().parse::<f64>()) else {
        return Err(bad_location());
    };
    check_point(lat, lng).map_err(|_| bad_location())?;
    let radius = param(params, "radius").ok_or("Invalid request. Missing the 'radius' parameter.")?;
    let radius_m = radius
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| check_radius(*r).is_ok())
        .ok_or_else(|| format!("Invalid request. Invalid 'radius' parameter {:?}.", printable(radius)))?;
    Ok(Nearby { lat, lng, radius_m, count: LEGACY_RESULTS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BODY;

    #[test]
    fn new_body_validation() {
        let q = parse_new_body(BODY.as_bytes()).unwrap();
        assert_eq!(q, Nearby { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, count: 5 });
        let body = |center: &str, radius: &str, rest: &str| {
            format!(r#"{{"locationRestriction":{{"circle":{{"center":{center},"radius":{radius}}}}}{rest}}}"#)
        };
        let c = r#"{"latitude":1,"longitude":2}"#;
        assert_eq!(parse_new_body(body(c, "50000", "").as_bytes()).unwrap().count, 20, "default count");
        assert_eq!(parse_new_body(body(c, "50000", r#","maxResultCount":20"#).as_bytes()).unwrap().count, 20);
        assert_eq!(parse_new_body(body(c, "0.5", r#","maxResultCount":1"#).as_bytes()).unwrap().count, 1);
        for (bad, why) in [
            (body(c, "0", ""), "radius 0"),
            (body(c, "-5", ""), "negative radius"),
            (body(c, "50000.5", ""), "radius too large"),
            (body(c, "\"100\"", ""), "radius a string"),
            (body(c, "100", r#","maxResultCount":0"#), "count 0"),
            (body(c, "100", r#","maxResultCount":21"#), "count 21"),
            (body(c, "100", r#","maxResultCount":5.5"#), "count 5.5"),
            (body(c, "100", r#","maxResultCount":-1"#), "count -1"),
            (body(c, "100", r#","maxResultCount":"5""#), "count a string"),
            (body(c, "100", r#","bogus":1"#), "unknown field"),
            (body(r#"{"latitude":91,"longitude":2}"#, "100", ""), "latitude 91"),
            (body(r#"{"latitude":1,"longitude":-180.5}"#, "100", ""), "longitude -180.5"),
            (body(r#"{"longitude":2}"#, "100", ""), "no latitude"),
            (r#"{"maxResultCount":5}"#.into(), "no locationRestriction"),
            (r#"{"locationRestriction":{"circle":{"radius":5}}}"#.into(), "no center"),
            ("[1]".into(), "not an object"),
            ("{\"locationRestriction\":".into(), "truncated"),
            (String::new(), "empty"),
        ] {
            assert!(parse_new_body(bad.as_bytes()).is_err(), "{why}: {bad}");
        }
    }

    #[test]
    fn legacy_query_parsing() {
        let params = query_params("location=34.06893,-118.445127&radius=10000&key=k%2By%2F1&x=a+b");
        assert_eq!(param(&params, "key"), Some("k+y/1"));
        assert_eq!(param(&params, "x"), Some("a b"));
        assert_eq!(
            parse_legacy_query(&params),
            Ok(Nearby { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, count: 20 })
        );
        let q = |s: &str| parse_legacy_query(&query_params(s));
        assert_eq!(q("location=-33.8587%2C151.21&radius=1.5").unwrap().lng, 151.21);
        assert_eq!(q("radius=50000&location=90,-180").unwrap().radius_m, 50_000.0);
        for bad in [
            "radius=100",
            "location=&radius=100",
            "location=1&radius=100",
            "location=1,2,3&radius=100",
            "location=abc,2&radius=100",
            "location=91,2&radius=100",
            "location=1,181&radius=100",
            "location=NaN,2&radius=100",
            "location=1,2",
            "location=1,2&radius=",
            "location=1,2&radius=0",
            "location=1,2&radius=-3",
            "location=1,2&radius=50001",
            "location=1,2&radius=ten",
            "location=1,2&radius=inf",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
        // Malformed escapes stay as they are.
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%2c"), "A,");
    }
}
