//! Field masks of the New API (`X-Goog-FieldMask`): which parts of a place an answer holds.

use serde_json::{Map, Value};

use crate::places::synthetic_places;

/// Which parts of a place to return: everything (`all`), or the named children.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Mask {
    all: bool,
    children: Vec<(String, Mask)>,
}

impl Mask {
    fn insert(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            self.all = true;
            return;
        };
        let child = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children.push(((*first).to_owned(), Mask::default()));
                let last = self.children.len() - 1;
                &mut self.children[last].1
            }
        };
        child.insert(rest);
    }

    /// `v` cut down to the mask; object keys keep `v`'s order.
    pub(crate) fn apply(&self, v: &Value) -> Value {
        if self.all {
            return v.clone();
        }
        let Value::Object(o) = v else { return v.clone() };
        let mut out = Map::new();
        for (k, child) in o {
            if let Some((_, m)) = self.children.iter().find(|(name, _)| name == k) {
                out.insert(k.clone(), m.apply(child));
            }
        }
        Value::Object(out)
    }
}

/// Why a field mask was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum MaskError {
    /// None given, or only commas and spaces.
    Missing,
    /// A path that names no field the stub can return.
    Unknown(String),
}

/// Parses `X-Goog-FieldMask` for `searchNearby`: comma-separated paths `places.FIELD[.SUB]`, or
/// `*` / `places` / `places.*` for everything.
pub(crate) fn parse_field_mask(s: &str) -> Result<Mask, MaskError> {
    let sample = synthetic_places(0.0, 0.0, 1.0, 1).remove(0).new_json();
    let mut mask = Mask::default();
    let mut any = false;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        if matches!(part, "*" | "places" | "places.*") {
            mask.all = true;
            continue;
        }
        let unknown = || MaskError::Unknown(part.to_owned());
        let path: Vec<&str> = part.strip_prefix("places.").ok_or_else(unknown)?.split('.').collect();
        let mut at = &sample;
        for seg in &path {
            at = at.get(seg).ok_or_else(unknown)?;
        }
        mask.insert(&path);
    }
    if any { Ok(mask) } else { Err(MaskError::Missing) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{keys, masked};

    #[test]
    fn field_mask_keeps_only_the_named_fields() {
        let all = [
            "id",
            "types",
            "shortFormattedAddress",
            "location",
            "rating",
            "userRatingCount",
            "businessStatus",
            "displayName",
        ];
        assert_eq!(keys(&masked(herd::places::FIELD_MASK)), all);
        for everything in ["*", "places", "places.*", " * "] {
            assert_eq!(keys(&masked(everything)), all, "{everything}");
        }
        assert_eq!(keys(&masked("places.displayName, places.id")), ["id", "displayName"]);
        let v = masked("places.displayName.text,places.location.latitude");
        assert_eq!(keys(&v), ["location", "displayName"]);
        assert_eq!(keys(&v["displayName"]), ["text"]);
        assert_eq!(keys(&v["location"]), ["latitude"]);
        // A whole field wins over one of its parts, in either order.
        assert_eq!(
            keys(&masked("places.location.latitude,places.location")["location"]),
            ["latitude", "longitude"]
        );
        assert_eq!(
            keys(&masked("places.location,places.location.latitude")["location"]),
            ["latitude", "longitude"]
        );
    }

    #[test]
    fn field_mask_refuses_missing_and_unknown_paths() {
        assert_eq!(parse_field_mask(""), Err(MaskError::Missing));
        assert_eq!(parse_field_mask(" , ,"), Err(MaskError::Missing));
        for bad in
            ["id", "places.", "places.name", "places.displayName.txt", "places.rating.value", "nextPageToken"]
        {
            assert!(matches!(parse_field_mask(bad), Err(MaskError::Unknown(p)) if p == bad), "{bad}");
        }
        assert!(
            matches!(parse_field_mask("places.id,places.bogus"), Err(MaskError::Unknown(p)) if p == "places.bogus")
        );
    }
}
