//! The key-to-group hash is part of the cluster format: these values must never change.

use keel_client::route::{fnv1a_64, group_of, hash_tag};

#[test]
fn fnv1a_64_matches_the_reference_vectors() {
    assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn hash_tags_follow_redis_cluster() {
    assert_eq!(hash_tag(b"{user42}/name"), b"user42");
    assert_eq!(hash_tag(b"plain"), b"plain");
    // An empty tag, or a `{` with no `}` after it, hashes the whole key.
    assert_eq!(hash_tag(b"{}x"), b"{}x");
    assert_eq!(hash_tag(b"ab{cd"), b"ab{cd");
    assert_eq!(hash_tag(b"x}{"), b"x}{");
    // Only the first `{` and the first `}` after it count.
    assert_eq!(hash_tag(b"a{b}{c}"), b"b");
    assert_eq!(hash_tag(b"{{x}}"), b"{x");
}

#[test]
fn groups_are_pinned() {
    // (key, [groups 1, 2, 3, 16, 1000])
    let pins: [(&[u8], [u32; 5]); 7] = [
        (b"", [0, 1, 2, 5, 37]),
        (b"a", [0, 0, 1, 12, 996]),
        (b"foobar", [0, 0, 0, 8, 968]),
        (b"config/a", [0, 1, 2, 11, 907]),
        (b"{user42}/name", [0, 0, 2, 0, 120]),
        (b"{}x", [0, 1, 2, 7, 823]),
        (b"a{b}{c}", [0, 1, 1, 5, 629]),
    ];
    for (key, expected) in pins {
        let found = [1, 2, 3, 16, 1000].map(|g| group_of(key, g));
        assert_eq!(found, expected, "key {:?}", String::from_utf8_lossy(key));
    }
}

#[test]
fn tagged_keys_share_a_group_and_zero_groups_is_one() {
    for groups in 1..64 {
        let g = group_of(b"user42", groups);
        assert_eq!(group_of(b"{user42}/name", groups), g);
        assert_eq!(group_of(b"prefix/{user42}/mail", groups), g);
        assert!(g < groups);
    }
    assert_eq!(group_of(b"anything", 0), 0);
}
