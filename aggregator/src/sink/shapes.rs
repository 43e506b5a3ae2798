//! Statement shapes: MySQL prepares each distinct statement text anew (two
//! round trips and a parse), so the sink's multi-row statements come in a
//! few fixed shapes, which stay in the connection's statement cache.

/// The largest multi-row `INSERT`; a batch is cut into this fixed shape plus a remainder.
pub(super) const INSERT_ROWS: usize = 100;

/// The statement shape for a batch's partitions (a topic has
/// `shared::kafka::PARTITIONS` unless resized).
pub(super) const PARTITION_ROWS: usize = 8;

/// `items` with its last element repeated up to `len` (unchanged when empty
/// or longer). For reads only, where a repeated key changes nothing: variable
/// statement shapes would each be prepared anew (two round trips and a parse
/// per statement); padded ones stay in the connection's statement cache.
pub(super) fn padded<T: Clone>(items: &[T], len: usize) -> Vec<T> {
    let mut out = items.to_vec();
    if let Some(last) = items.last().cloned() {
        out.resize(len.max(items.len()), last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn padding_repeats_the_last_item_and_leaves_longer_or_empty_lists_alone() {
        assert_eq!(padded(&[1, 2, 3], 5), [1, 2, 3, 3, 3]);
        assert_eq!(padded(&[1, 2, 3], 2), [1, 2, 3]);
        assert_eq!(padded::<i32>(&[], 4), Vec::<i32>::new());
    }
}
