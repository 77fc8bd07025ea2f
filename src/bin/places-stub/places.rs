//! Synthetic places: deterministic functions of the query, clearly named as synthetic, each within
//! [`MARGIN`] of the radius from the centre, in both API shapes, and padded on demand.

use serde_json::{Value, json};

/// Places lie at most this fraction of the radius from the centre.
const MARGIN: f64 = 0.9;
/// Mean Earth radius (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// One synthetic place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Place {
    /// 1-based position in the answer.
    pub(crate) index: usize,
    pub(crate) id: String,
    pub(crate) lat: f64,
    pub(crate) lng: f64,
    pub(crate) rating: f64,
    pub(crate) user_ratings: u64,
    pub(crate) business_status: &'static str,
}

impl Place {
    fn name(&self) -> String {
        format!("Synthetic Place {} (places-stub)", self.index)
    }

    fn street(&self) -> String {
        format!("Synthetic Street {}", self.index)
    }

    /// All the fields the stub knows, in the New API shape (and Google's order of the fixture).
    pub(crate) fn new_json(&self) -> Value {
        json!({
            "id": self.id,
            "types": ["point_of_interest", "establishment"],
            "shortFormattedAddress": self.street(),
            "location": { "latitude": self.lat, "longitude": self.lng },
            "rating": self.rating,
            "userRatingCount": self.user_ratings,
            "businessStatus": self.business_status,
            "displayName": { "text": self.name(), "languageCode": "en" },
        })
    }

    /// The legacy result, keys in Google's (alphabetical) order.
    pub(crate) fn legacy_json(&self) -> Value {
        json!({
            "business_status": self.business_status,
            "geometry": { "location": { "lat": self.lat, "lng": self.lng } },
            "name": self.name(),
            "place_id": self.id,
            "rating": self.rating,
            "types": ["point_of_interest", "establishment"],
            "user_ratings_total": self.user_ratings,
            "vicinity": self.street(),
        })
    }

    /// [`Self::new_json`] padded: `extra` more `types`, each as long as the others, and `tune`
    /// more bytes of `shortFormattedAddress`.
    pub(crate) fn padded_new_json(&self, extra: usize, tune: usize) -> Value {
        let mut v = self.new_json();
        if let Some(Value::Array(types)) = v.get_mut("types") {
            types.extend((1..=extra).map(|j| Value::String(format!("synthetic_type_{j:07}"))));
        }
        if let Some(Value::String(address)) = v.get_mut("shortFormattedAddress") {
            address.push_str(&filler(tune));
        }
        v
    }

    /// [`Self::legacy_json`] padded: `photos` entries in Google's shape (none when `photos` is
    /// 0), each as long as the others, and `tune` more bytes of `vicinity`.
    pub(crate) fn padded_legacy_json(&self, photos: usize, tune: usize) -> Value {
        let mut v = self.legacy_json();
        if let Value::Object(o) = &mut v {
            if photos > 0 {
                o.insert("photos".into(), Value::Array((1..=photos).map(|j| self.photo(j)).collect()));
                // Keep Google's (alphabetical) key order.
                o.sort_keys();
            }
            if let Some(Value::String(vicinity)) = o.get_mut("vicinity") {
                vicinity.push_str(&filler(tune));
            }
        }
        v
    }

    /// Photo `j` of this place, in the legacy shape: every photo serialises to the same length
    /// (fixed-width numbers, a 400-character reference like Google's).
    fn photo(&self, j: usize) -> Value {
        let r = mix(mix(self.lat.to_bits() ^ self.lng.to_bits().rotate_left(17)) ^ j as u64);
        let reference: String = (0..25u64).map(|i| format!("{:016x}", mix(r ^ i))).collect();
        json!({
            "height": 3024,
            // A u64 has at most 20 digits: `{r:020}` is always 20 wide.
            "html_attributions": [format!(
                "<a href=\"https://maps.google.com/maps/contrib/1{r:020}\">Synthetic Contributor {j:07}</a>"
            )],
            "photo_reference": reference,
            "width": 4032,
        })
    }
}

/// `len` bytes of printable ASCII that JSON needs no escape for, to lengthen an address.
fn filler(len: usize) -> String {
    ", Synthetic Arcade".chars().cycle().take(len).collect()
}

/// SplitMix64: a small, well-mixed hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from 53 bits of `r`.
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// The point `distance_m` from (`lat`, `lng`) on the initial bearing `bearing` (radians from
/// north), on a sphere: the exact great-circle step, so a degree of longitude shrinks with
/// cos(lat) as it must. Worked with unit vectors rather than `asin`, so it stays accurate near the
/// poles; it wraps across the antimeridian. The result has latitude in [-90, 90] and longitude in
/// [-180, 180).
fn destination(lat: f64, lng: f64, distance_m: f64, bearing: f64) -> (f64, f64) {
    let (phi, lambda) = (lat.to_radians(), lng.to_radians());
    let delta = distance_m / EARTH_RADIUS_M;
    let (sp, cp) = phi.sin_cos();
    let (sl, cl) = lambda.sin_cos();
    let (sd, cd) = delta.sin_cos();
    let (sb, cb) = bearing.sin_cos();
    // The centre, and the unit vectors pointing north and east there.
    let p = [cp * cl, cp * sl, sp];
    let north = [-sp * cl, -sp * sl, cp];
    let east = [-sl, cl, 0.0];
    let q: Vec<f64> = (0..3).map(|i| cd * p[i] + sd * (cb * north[i] + sb * east[i])).collect();
    let lat2 = q[2].atan2(q[0].hypot(q[1])).to_degrees();
    let lng2 = q[1].atan2(q[0]).to_degrees();
    (lat2.clamp(-90.0, 90.0), (lng2 + 180.0).rem_euclid(360.0) - 180.0)
}

/// Great-circle distance in metres (haversine), to check the places.
#[cfg(test)]
pub(crate) fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// `n` synthetic places around (`lat`, `lng`), each at most `MARGIN * radius_m` away: the same
/// inputs give the same places.
pub(crate) fn synthetic_places(lat: f64, lng: f64, radius_m: f64, n: usize) -> Vec<Place> {
    // `+ 0.0` makes -0.0 and 0.0 the same query.
    let seed = mix(mix(mix((lat + 0.0).to_bits()) ^ (lng + 0.0).to_bits()) ^ (radius_m + 0.0).to_bits());
    (1..=n)
        .map(|index| {
            let r1 = mix(seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
            let r2 = mix(r1);
            let r3 = mix(r2);
            // Uniform over the disc of radius MARGIN * radius_m.
            let d = MARGIN * radius_m * unit(r1).sqrt();
            let (plat, plng) = destination(lat, lng, d, std::f64::consts::TAU * unit(r2));
            Place {
                index,
                id: format!("stub-{seed:016x}-{index}"),
                lat: plat,
                lng: plng,
                rating: (10 + r3 % 41) as f64 / 10.0,
                user_ratings: (r3 >> 8) % 5000,
                business_status: if index % 10 == 0 { "CLOSED_TEMPORARILY" } else { "OPERATIONAL" },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_lie_within_the_radius_at_every_latitude() {
        let lats =
            [-90.0, -89.99999, -89.9, -75.0, -33.8587, -1e-9, 0.0, 34.06893, 60.0, 89.9, 89.99999, 90.0];
        let lngs = [-180.0, -179.99999, -118.445127, 0.0, 151.21, 179.99999, 180.0];
        let radii = [0.01, 1.0, 100.0, 10_000.0, 50_000.0];
        for &lat in &lats {
            for &lng in &lngs {
                for &r in &radii {
                    let places = synthetic_places(lat, lng, r, 20);
                    assert_eq!(places.len(), 20);
                    let mut farthest: f64 = 0.0;
                    for p in &places {
                        let d = distance_m(lat, lng, p.lat, p.lng);
                        assert!(
                            d <= MARGIN * r * (1.0 + 1e-6) + 1e-6,
                            "{d} m from ({lat}, {lng}), r {r}: {p:?}"
                        );
                        assert!(d < r, "{d} m from ({lat}, {lng}), r {r}");
                        assert!((-90.0..=90.0).contains(&p.lat) && (-180.0..180.0).contains(&p.lng), "{p:?}");
                        farthest = farthest.max(d);
                    }
                    // Spread over the disc, not heaped on the centre.
                    assert!(farthest > 0.5 * r, "farthest {farthest} m of r {r} at ({lat}, {lng})");
                }
            }
        }
    }

    #[test]
    fn a_degree_of_longitude_shrinks_with_latitude() {
        // Due east by 1 km at 60°N is twice the longitude of 1 km due east at the equator.
        let (_, at_equator) = destination(0.0, 0.0, 1000.0, std::f64::consts::FRAC_PI_2);
        let (lat, at_60) = destination(60.0, 0.0, 1000.0, std::f64::consts::FRAC_PI_2);
        assert!((at_60 / at_equator - 2.0).abs() < 1e-4, "{at_60} vs {at_equator}");
        assert!((lat - 60.0).abs() < 1e-3);
        // 1 km due north is 1 km / (R·π/180) degrees of latitude anywhere.
        let (north, _) = destination(-45.0, 10.0, 1000.0, 0.0);
        assert!((north + 45.0 - (1000.0 / EARTH_RADIUS_M).to_degrees()).abs() < 1e-9);
    }

    #[test]
    fn places_wrap_across_the_antimeridian_and_over_the_pole() {
        let places = synthetic_places(10.0, 179.99, 50_000.0, 20);
        let (east, west) =
            (places.iter().filter(|p| p.lng > 0.0).count(), places.iter().filter(|p| p.lng < 0.0).count());
        assert!(east > 0 && west > 0, "{east} east, {west} west of the antimeridian");
        assert!(places.iter().all(|p| p.lng.abs() < 180.0 && (p.lng.abs() > 179.0)));
        // A disc around a point 1.1 km from the North Pole covers the pole: longitudes all round.
        let places = synthetic_places(89.99, 0.0, 50_000.0, 20);
        assert!(places.iter().any(|p| p.lng.abs() > 90.0), "no place beyond the pole");
        for p in &places {
            assert!(distance_m(89.99, 0.0, p.lat, p.lng) < 50_000.0 * MARGIN + 1e-6);
        }
    }

    #[test]
    fn places_are_deterministic_distinct_and_named_as_synthetic() {
        let a = synthetic_places(34.06893, -118.445127, 1000.0, 20);
        assert_eq!(a, synthetic_places(34.06893, -118.445127, 1000.0, 20));
        assert_eq!(a[..5], synthetic_places(34.06893, -118.445127, 1000.0, 5)[..]);
        let b = synthetic_places(34.06893, -118.445127, 1001.0, 20);
        assert_ne!(a[0].id, b[0].id);
        let mut ids: Vec<&str> = a.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        let p = &a[2];
        assert!(p.id.starts_with("stub-") && p.id.ends_with("-3"), "{}", p.id);
        assert_eq!(p.name(), "Synthetic Place 3 (places-stub)");
        assert_eq!(p.street(), "Synthetic Street 3");
        assert!((1.0..=5.0).contains(&p.rating));
        assert_eq!(p.new_json()["types"], json!(["point_of_interest", "establishment"]));
    }
}
