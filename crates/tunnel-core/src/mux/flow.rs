//! Flow-control policy: how a busy stream's receive window grows.

/// Largest receive window a single stream grows to. A stream's throughput is at most its window
/// per round trip of credit: 512 KiB (the default `streamWindow`) caps a lone stream at
/// ~26 MB/s over a 20 ms path, and on a busy 2-core loopback it stalled on credit whenever the
/// receiver was descheduled for ~150 µs. 2 MiB quadruples the first and absorbs the second,
/// and is an eighth of the default connection window.
const MAX_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The window a stream gets when it has used half of `current`: doubled, up to an equal share
/// of a quarter of the connection window among the open streams, never above
/// `MAX_STREAM_WINDOW` nor below the configured `base`. A tunnel with one or two bulk streams
/// lets them run ahead; with eight or more, other streams keep the pipe full and each stays at
/// `base` (larger windows measured slower there: more bytes in flight than the caches hold),
/// and the connection window, which bounds what a slow target makes the receiver buffer, is
/// shared rather than claimed by the first few streams.
/// A stream with a buffer cap (`cap`) never grows past it.
pub(super) fn grown_window(
    current: u32,
    base: u32,
    connection_window: u32,
    open_streams: usize,
    cap: Option<u32>,
) -> u32 {
    let share = (u64::from(connection_window) / 4 / open_streams.max(1) as u64)
        .min(u64::from(MAX_STREAM_WINDOW)) as u32;
    let limit = cap.unwrap_or(u32::MAX);
    current
        .saturating_mul(2)
        .min(share)
        .max(base)
        .min(limit)
        .max(current)
}

/// The largest window a receiver ever grants a stream: [`grown_window`]'s ceiling. What a
/// sender's credit is clipped to, whatever a peer grants.
pub(super) fn max_window(stream_window: u32, cap: Option<u32>) -> u32 {
    let ceiling = stream_window.max(MAX_STREAM_WINDOW);
    cap.map_or(ceiling, |c| c.min(ceiling))
}

/// A stream's window: the tunnel's `stream_window`, or the stream's buffer cap when its
/// service has a smaller one (`bufferBytes`, carried in the OPEN record so both ends agree).
pub(super) fn capped(stream_window: u32, cap: Option<u32>) -> u32 {
    cap.map_or(stream_window, |c| c.min(stream_window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_bulk_streams_grow_their_window_and_crowds_do_not() {
        let (base, conn) = (512 * 1024, 16 * 1024 * 1024);
        // One or two streams: doubling up to MAX_STREAM_WINDOW.
        assert_eq!(grown_window(base, base, conn, 1, None), 2 * base);
        assert_eq!(grown_window(2 * base, base, conn, 2, None), MAX_STREAM_WINDOW);
        assert_eq!(
            grown_window(MAX_STREAM_WINDOW, base, conn, 1, None),
            MAX_STREAM_WINDOW
        );
        // Nine streams (iperf3 -P 8): a quarter of the connection window shared is below the
        // base, which stays.
        assert_eq!(grown_window(base, base, conn, 9, None), base);
        // A window never shrinks, and a configured base above the cap is kept.
        assert_eq!(grown_window(2 * base, base, conn, 1000, None), 2 * base);
        assert_eq!(grown_window(8 << 20, 8 << 20, conn, 1, None), 8 << 20);
        // A buffer cap stops growth, even below the base.
        assert_eq!(grown_window(2048, base, conn, 1, Some(2048)), 2048);
        assert_eq!(grown_window(2048, base, conn, 1, Some(3000)), 3000);
    }

    /// However a window grows, it stays within `max_window`, which is what senders clip a
    /// peer's grants to.
    #[test]
    fn no_window_grows_past_max_window() {
        let conn = 16 * 1024 * 1024;
        for base in [16 * 1024, 512 * 1024, 8 << 20] {
            for cap in [None, Some(4096), Some(3 << 20), Some(u32::MAX)] {
                let mut w = capped(base, cap);
                for open in [1, 1, 1, 2, 1, 1, 1] {
                    w = grown_window(w, base, conn, open, cap);
                    assert!(w <= max_window(base, cap), "{w} with base {base}, cap {cap:?}");
                }
            }
        }
    }
}
