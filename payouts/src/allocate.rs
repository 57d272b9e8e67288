//! Splitting a pool among patients in exact minor units: the largest-remainder (Hamilton)
//! method. Every part is the floor of its exact share; the cents left over go one each to the
//! largest fractional remainders, so the parts always sum to the pool to the cent.

use ring::digest;

/// Splits `pool` (minor units, non-negative) among `weights` (id, weight > 0). Ties between
/// equal remainders are broken by a hash of `(salt, id)`, so that across many fees the spare
/// cents do not always fall to the same patients, yet the result is reproducible.
///
/// Returns the parts in the order of `weights`; parts of zero are kept (the caller may drop
/// them). An empty `weights` or a zero total weight returns no parts: the caller keeps the pool.
pub fn largest_remainder(pool: i64, weights: &[(String, u64)], salt: &str) -> Vec<(String, i64)> {
    let total: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    if pool <= 0 || total == 0 {
        return weights.iter().map(|(id, _)| (id.clone(), 0)).collect();
    }
    let pool_u = pool as u128;
    let mut parts: Vec<(String, i64)> = Vec::with_capacity(weights.len());
    // (remainder numerator, tie-break, index)
    let mut rem: Vec<(u128, [u8; 8], usize)> = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, (id, w)) in weights.iter().enumerate() {
        let exact = pool_u * u128::from(*w);
        let floor = exact / total;
        given += floor;
        parts.push((id.clone(), floor as i64));
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(salt.as_bytes());
        ctx.update(&[0]);
        ctx.update(id.as_bytes());
        let d = ctx.finish();
        let mut tie = [0u8; 8];
        tie.copy_from_slice(&d.as_ref()[..8]);
        rem.push((exact % total, tie, i));
    }
    let left = (pool_u - given) as usize; // < number of parts
    if left > 0 {
        // Largest remainders first; then the hash; then the index (ids may repeat).
        rem.select_nth_unstable_by(left - 1, |a, b| {
            b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
        });
        for r in &rem[..left] {
            parts[r.2].1 += 1;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("p{i}"), 1)).collect()
    }

    #[test]
    fn equal_split_gives_spare_cents_to_some() {
        let parts = largest_remainder(1000, &ids(3), "fee-1");
        let sum: i64 = parts.iter().map(|p| p.1).sum();
        assert_eq!(sum, 1000);
        let mut amounts: Vec<i64> = parts.iter().map(|p| p.1).collect();
        amounts.sort();
        assert_eq!(amounts, vec![333, 333, 334]);
    }

    #[test]
    fn weights_are_respected() {
        let w = vec![("a".to_string(), 3), ("b".to_string(), 1)];
        assert_eq!(
            largest_remainder(400, &w, "x"),
            vec![("a".to_string(), 300), ("b".to_string(), 100)]
        );
    }

    #[test]
    fn fewer_cents_than_patients() {
        let parts = largest_remainder(2, &ids(5), "s");
        assert_eq!(parts.iter().map(|p| p.1).sum::<i64>(), 2);
        assert!(parts.iter().all(|p| p.1 <= 1));
    }

    proptest! {
        #[test]
        fn parts_sum_to_the_pool(pool in 0i64..10_000_000_000, ws in proptest::collection::vec(1u64..1000, 1..200), salt in "[a-z]{0,8}") {
            let weights: Vec<(String, u64)> = ws.iter().enumerate().map(|(i, w)| (format!("p{i}"), *w)).collect();
            let parts = largest_remainder(pool, &weights, &salt);
            prop_assert_eq!(parts.iter().map(|p| p.1).sum::<i64>(), pool);
            let total: u128 = ws.iter().map(|w| u128::from(*w)).sum();
            for ((_, got), w) in parts.iter().zip(&ws) {
                // Each part is its exact share rounded down or up: never off by a cent or more.
                let exact_floor = (pool as u128 * u128::from(*w) / total) as i64;
                prop_assert!(*got == exact_floor || *got == exact_floor + 1);
            }
        }
    }
}
