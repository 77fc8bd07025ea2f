//! Unit tests of the WHATSAT flow's parts: keys, the cache, the rate limiter, the throttle.

use super::*;

#[test]
fn key_rounds_location_and_radius_and_drops_the_legacy_bound() {
    let a = Key::new(PlacesApi::New, 34.0689301, -118.4451274, 10.0004, 5);
    let b = Key::new(PlacesApi::New, 34.0689299, -118.4451266, 9.9996, 5);
    assert_eq!(a, b);
    assert_eq!(
        a.map(Key::query),
        Some(Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 5 })
    );
    assert_ne!(a, Key::new(PlacesApi::New, 34.0689301, -118.4451274, 10.0004, 6));
    assert_eq!(Key::new(PlacesApi::Legacy, 1.0, 2.0, 1.0, 3), Key::new(PlacesApi::Legacy, 1.0, 2.0, 1.0, 17));
    assert_eq!(Key::new(PlacesApi::New, 1.0, 2.0, 0.000_49, 3), None);
    assert_eq!(Key::new(PlacesApi::New, 1.0, 2.0, f64::NAN, 3), None);
}

fn response(len: usize) -> Response {
    Response { status: 200, body: vec![b'x'; len], keep_alive: true }
}

fn key(i: i64) -> Key {
    Key { lat_e6: i, lng_e6: 0, radius_m: 1, count: 1 }
}

#[test]
fn cache_evicts_oldest_first_within_its_byte_bound() {
    let now = Instant::now();
    let per = 1000 + CACHE_ENTRY_OVERHEAD;
    let mut c = Cache::new(Duration::from_secs(60), 3 * per);
    for i in 0..5 {
        c.insert(now, key(i), response(1000));
        assert!(c.bytes <= 3 * per);
    }
    let held: Vec<i64> = (0..5).filter(|&i| c.contains(now, &key(i))).collect();
    assert_eq!(held, [2, 3, 4]);
    // Too large for the whole cache: not cached, nothing evicted.
    c.insert(now, key(9), response(3 * per));
    assert!(!c.contains(now, &key(9)));
    assert!(c.contains(now, &key(4)));
    // Replacing an entry does not count it twice.
    c.insert(now, key(4), response(1000));
    assert_eq!(c.bytes, 3 * per);
}

#[test]
fn cache_converts_once_per_bound_and_counts_the_conversions() {
    let now = Instant::now();
    let mut c = Cache::new(Duration::from_secs(60), 1 << 20);
    let body = br#"{"html_attributions":[],"results":[{"name":"a"},{"name":"b"}],"status":"OK"}"#;
    c.insert(now, key(1), Response { status: 200, body: body.to_vec(), keep_alive: true });
    let base = c.bytes;
    let one = c.json(now, &key(1), PlacesApi::Legacy, 1).unwrap().unwrap().into_owned();
    assert!(matches!(c.json(now, &key(1), PlacesApi::Legacy, 1), Some(Ok(Cow::Borrowed(_)))));
    assert_eq!(c.bytes, base + one.len(), "the conversion counts against the bound");
    c.json(now, &key(1), PlacesApi::Legacy, 2).unwrap().unwrap();
    assert_eq!(c.map[&key(1)].converted.len(), 2);
    c.remove(&key(1));
    assert_eq!(c.bytes, 0, "everything freed");
    assert!(c.json(now, &key(1), PlacesApi::Legacy, 1).is_none());
}

#[test]
fn cache_expires_entries_after_the_ttl_and_zero_ttl_caches_nothing() {
    let now = Instant::now();
    let mut c = Cache::new(Duration::from_secs(60), 1 << 20);
    c.insert(now, key(1), response(10));
    c.insert(now + Duration::from_secs(30), key(2), response(10));
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(60)));
    assert!(!c.contains(now + Duration::from_secs(60), &key(1)));
    assert!(c.contains(now + Duration::from_secs(60), &key(2)));
    assert_eq!(c.bytes, 10 + CACHE_ENTRY_OVERHEAD);
    let mut off = Cache::new(Duration::ZERO, 1 << 20);
    off.insert(now, key(1), response(10));
    assert!(!off.contains(now, &key(1)));
}

#[test]
fn rate_limit_forgets_refilled_buckets() {
    let now = Instant::now();
    let mut r = RateLimit::new(10.0, 2);
    for conn in 0..1000 {
        assert!(r.allow(now, ConnId(conn)));
    }
    assert_eq!(r.tat.len(), 1000);
    assert!(r.allow(now + Duration::from_secs(2), ConnId(5000)));
    assert_eq!(r.tat.len(), 1, "refilled buckets swept");
    let mut off = RateLimit::new(0.0, 1);
    assert!((0..100).all(|_| off.allow(now, ConnId(1))));
    assert!(off.tat.is_empty());
}

#[test]
fn throttle_counts_repeats_and_reports_them_once_the_interval_passes() {
    let now = Instant::now();
    let mut t = Throttle::default();
    for i in 0..100 {
        t.warn(now + Duration::from_millis(i), Warning::Failed, format_args!("failed {i}"));
    }
    assert_eq!(t.slots[Warning::Failed as usize], (Some(now + WARN_INTERVAL), 99));
    assert_eq!(t.poll_timeout(), Some(now + WARN_INTERVAL));
    t.flush(now + WARN_INTERVAL);
    assert_eq!(t.slots[Warning::Failed as usize], (None, 0));
    assert_eq!(t.poll_timeout(), None);
    // Kinds are throttled apart.
    t.warn(now, Warning::RateLimited, format_args!("x"));
    t.warn(now, Warning::QueueFull, format_args!("y"));
    assert_eq!(t.slots[Warning::QueueFull as usize].1, 0);
}
