//! In-process stores: sharded, bounded, driven by an injectable clock.
