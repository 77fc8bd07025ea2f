//! Padded answers (`--pad-to`, `--size-by-radius`): bodies of a chosen size, still in Google's
//! shape.

use serde_json::{Value, json};

use crate::json::{pretty_legacy, pretty_new};
use crate::mask::Mask;
use crate::places::synthetic_places;
use crate::query::Nearby;

/// The body `render(n, extra, tune)` closest to `target` bytes from above, exactly `target` when
/// it can be: `n` results (`count`, or fewer, down to one, while even the bare answer is too
/// large), `extra` padding items in each result, `tune` more bytes of one string.
///
/// `render` must grow by the same number of bytes for every item after the first (the first
/// may cost more: it may bring its key) and by exactly one byte per `tune`, or not at all when
/// a field mask leaves the padded fields out. Only the final body is rendered at full size.
fn fit(target: usize, count: usize, render: impl Fn(usize, usize, usize) -> Vec<u8>) -> Vec<u8> {
    let mut n = count.max(1);
    let mut bare = render(n, 0, 0);
    while bare.len() > target && n > 1 {
        n -= 1;
        bare = render(n, 0, 0);
    }
    if bare.len() >= target {
        return bare;
    }
    let one = render(n, 1, 0).len();
    let step = if one > target { 0 } else { render(n, 2, 0).len().saturating_sub(one) };
    // No step: the mask leaves the padded items out (or the first is already too large).
    let (extra, before) = match target.saturating_sub(one).checked_div(step) {
        Some(more) => (1 + more, one + more * step),
        None => (0, bare.len()),
    };
    render(n, extra, target - before)
}

/// A New API answer to `q` of about `target` bytes, cut to `mask`: extra `types` in every place
/// and the rest in the last place's `shortFormattedAddress`.
pub(crate) fn padded_new(q: &Nearby, mask: &Mask, target: usize) -> Vec<u8> {
    fit(target, q.count, |n, extra, tune| {
        let places: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, n)
            .iter()
            .map(|p| mask.apply(&p.padded_new_json(extra, if p.index == n { tune } else { 0 })))
            .collect();
        pretty_new(&json!({ "places": places }))
    })
}

/// A legacy answer to `q` of about `target` bytes: `photos` in every result and the rest in the
/// last result's `vicinity`, laid out by [`spaced_legacy`].
pub(crate) fn padded_legacy(q: &Nearby, target: usize) -> Vec<u8> {
    fit(target, q.count, |n, extra, tune| {
        let results: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, n)
            .iter()
            .map(|p| p.padded_legacy_json(extra, if p.index == n { tune } else { 0 }))
            .collect();
        spaced_legacy(&json!({ "html_attributions": [], "results": results, "status": "OK" }))
    })
}

/// [`pretty_legacy`] with a blank line after each result but the last and a second newline at
/// the end: runs of newlines as Google's legacy answers were reported to carry, which a WHATSAT
/// reply must collapse.
fn spaced_legacy(v: &Value) -> Vec<u8> {
    let plain = pretty_legacy(v);
    let mut out = Vec::with_capacity(plain.len() + 64);
    for line in plain.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line);
        // Results are the only objects two levels in (six spaces).
        if line == b"      },\n" {
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::answer::respond;
    use crate::cli::{Options, Size};
    use crate::places::distance_m;
    use crate::testing::{
        BODY, LEGACY_RESULT_KEYS, json_of, keys, legacy_request, masked, new_request, opts,
    };

    const KIB: usize = 1024;
    /// The sizes the WHATSAT tests use: 1 KiB, 20 KiB, 64 KiB, 300 KiB, 1.9 MiB.
    const SIZES: [usize; 5] = [KIB, 20 * KIB, 64 * KIB, 300 * KIB, 1946 * KIB];

    fn sized(size: Size) -> Options {
        Options { size, ..opts() }
    }

    fn new_body(radius_m: f64, count: usize) -> String {
        format!(
            r#"{{"locationRestriction":{{"circle":{{"center":{{"latitude":34.06893,"longitude":-118.445127}},"radius":{radius_m:.1}}}}},"maxResultCount":{count}}}"#
        )
    }

    fn legacy_query(radius_m: f64) -> String {
        format!("location=34.06893,-118.445127&radius={radius_m}&key=right-key")
    }

    /// Checks a padded legacy body: Google's layout (three-space indent, `" : "`, a blank line
    /// between results, trailing newlines), keys and order, the photos' shape. Returns the JSON.
    fn check_padded_legacy(body: &[u8]) -> Value {
        let text = std::str::from_utf8(body).unwrap();
        assert!(
            text.starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n"),
            "{text:.200}"
        );
        assert!(
            text.ends_with("\n   \"status\" : \"OK\"\n}\n\n"),
            "trailing newlines: {:?}",
            &text[text.len() - 40..]
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(keys(&v), ["html_attributions", "results", "status"]);
        let results = v["results"].as_array().unwrap();
        assert_eq!(
            text.matches("\n      },\n\n      {\n").count(),
            results.len() - 1,
            "a blank line between results"
        );
        for r in results {
            let k = keys(r);
            let mut sorted = k.clone();
            sorted.sort_unstable();
            assert_eq!(k, sorted, "Google's alphabetical key order");
            let bare: Vec<&str> = k.iter().copied().filter(|k| *k != "photos").collect();
            assert_eq!(bare, LEGACY_RESULT_KEYS);
            for photo in r.get("photos").and_then(Value::as_array).into_iter().flatten() {
                assert_eq!(keys(photo), ["height", "html_attributions", "photo_reference", "width"]);
                assert_eq!(photo["photo_reference"].as_str().unwrap().len(), 400);
                let credit = photo["html_attributions"][0].as_str().unwrap();
                assert!(credit.starts_with("<a href=\"https://maps.google.com/maps/contrib/1"), "{credit}");
            }
            let loc = &r["geometry"]["location"];
            assert!(
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap())
                    < 1e5
            );
        }
        v
    }

    /// Checks a padded New API body against the herd's mask. Returns the JSON.
    fn check_padded_new(body: &[u8]) -> Value {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.starts_with("{\n  \"places\": [\n    {\n") && text.ends_with("\n}\n"), "{text:.200}");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(keys(&v), ["places"]);
        for p in v["places"].as_array().unwrap() {
            assert_eq!(keys(p), keys(&masked(herd::places::FIELD_MASK)), "only the mask's fields");
            let types = p["types"].as_array().unwrap();
            assert_eq!(types[..2], [json!("point_of_interest"), json!("establishment")]);
            assert!(types[2..].iter().all(|t| t.as_str().unwrap().starts_with("synthetic_type_")));
        }
        v
    }

    fn within_a_percent(len: usize, target: usize) {
        let off = len.abs_diff(target) as f64 / target as f64;
        assert!(off <= 0.01, "{len} bytes for a target of {target}");
    }

    #[test]
    fn padded_answers_parse_have_googles_shape_and_the_size_asked() {
        let mask = Some(herd::places::FIELD_MASK);
        for target in SIZES {
            let o = sized(Size::Fixed(target));
            let r = respond(&legacy_request(&legacy_query(1000.0)), &o);
            assert_eq!(r.status, 200);
            within_a_percent(r.body.len(), target);
            let v = check_padded_legacy(&r.body);
            let results = v["results"].as_array().unwrap().len();
            // Only the smallest target needs fewer results than Google's twenty.
            assert_eq!(results == 20, target > KIB, "{results} results in {target} bytes");
            assert!(results >= 1);

            for count in [1, 5, 20] {
                let r = respond(&new_request(Some("right-key"), mask, &new_body(1000.0, count)), &o);
                assert_eq!(r.status, 200);
                within_a_percent(r.body.len(), target);
                let n = check_padded_new(&r.body)["places"].as_array().unwrap().len();
                assert!(
                    n == count || (target == KIB && (1..count).contains(&n)),
                    "{n} of {count} in {target}"
                );
            }
        }
    }

    #[test]
    fn padding_is_exact_to_the_byte_and_deterministic() {
        for target in [1000, KIB, 5000, 20 * KIB + 1, 64 * KIB - 1, 100_001] {
            let o = sized(Size::Fixed(target));
            let a = respond(&legacy_request(&legacy_query(500.0)), &o);
            assert_eq!(a.body.len(), target);
            assert_eq!(a, respond(&legacy_request(&legacy_query(500.0)), &o));
            let b = respond(&new_request(Some("right-key"), Some("*"), &new_body(500.0, 7)), &o);
            assert_eq!(b.body.len(), target);
        }
    }

    #[test]
    fn size_by_radius_gives_round_radius_kib() {
        let o = sized(Size::ByRadius);
        for (radius_m, kib) in
            [(1.0, 1), (19.6, 20), (64.0, 64), (300.0, 300), (1946.0, 1946), (2100.0, 2100)]
        {
            let r = respond(&legacy_request(&legacy_query(radius_m)), &o);
            assert_eq!(r.body.len(), kib * KIB, "radius {radius_m}");
            let r = respond(
                &new_request(Some("right-key"), Some(herd::places::FIELD_MASK), &new_body(radius_m, 20)),
                &o,
            );
            assert_eq!(r.body.len(), kib * KIB, "radius {radius_m}");
        }
        // The places still lie within the radius asked, however small.
        let v = check_padded_legacy(&respond(&legacy_request(&legacy_query(2.0)), &o).body);
        for r in v["results"].as_array().unwrap() {
            let loc = &r["geometry"]["location"];
            assert!(
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap())
                    < 2.0
            );
        }
    }

    #[test]
    fn padding_leaves_errors_small_and_the_default_unchanged() {
        let o = sized(Size::Fixed(64 * KIB));
        // Refusals are not padded.
        let r = respond(&legacy_request("location=1,2&radius=5&key=wrong"), &o);
        assert!(r.body.len() < 1000 && json_of(&r)["status"] == "REQUEST_DENIED");
        let r = respond(&new_request(Some("wrong"), Some("*"), BODY), &o);
        assert!(r.status == 403 && r.body.len() < 1000);
        // A mask without the padded fields gets the bare answer, as Google would send it.
        let r = respond(&new_request(Some("right-key"), Some("places.id,places.rating"), BODY), &o);
        assert_eq!(
            r,
            respond(&new_request(Some("right-key"), Some("places.id,places.rating"), BODY), &opts())
        );
        // A target under one bare result: that one result, unpadded.
        let tiny = sized(Size::Fixed(10));
        let v = json_of(&respond(&legacy_request(&legacy_query(5.0)), &tiny));
        assert_eq!(v["results"].as_array().unwrap().len(), 1);
        assert_eq!(v["results"][0]["vicinity"], "Synthetic Street 1");
        // Without a size, answers are as they always were.
        let plain = respond(&legacy_request(&legacy_query(1000.0)), &opts());
        assert!(!plain.body.windows(2).any(|w| w == b"\n\n") && plain.body.len() < 20 * KIB);
    }
}
