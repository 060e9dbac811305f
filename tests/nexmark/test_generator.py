"""The Nexmark generator against nexmark-flink's published rules, checked by
brute-force references written here (one Python loop per event), not by the
vectorized code under test."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice.nexmark.generator import (
    AUCTION_SCHEMA,
    BID_SCHEMA,
    EVENT_SCHEMA,
    PERSON_SCHEMA,
    NexmarkConfig,
    generate,
    generate_events,
    generate_kind,
    write_parquet,
)

BASE = 1_436_918_400_000
N = 100_000
FIRST_NAMES = {"Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"}  # fmt: skip
LAST_NAMES = {"Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"}  # fmt: skip
CITIES = {"Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"}  # fmt: skip
STATES = {"AZ", "CA", "ID", "OR", "WA", "WY"}
HOT_CHANNELS = {"Google", "Facebook", "Baidu", "Apple"}


@pytest.fixture(scope="module")
def tables() -> sl.nexmark.generator.NexmarkTables:
    return generate(NexmarkConfig(events=N, seed=3))


def reference_ids(n: int) -> tuple[list[int], list[int], list[int]]:
    """Walk the events one by one (1 person, 3 auctions, 46 bids per 50) and record,
    for each event, its kind and the last person and auction id generated so far
    (ids start at 1000; 999 before the first auction)."""
    kinds, last_p, last_a = [], [], []
    p, a = 999, 999
    for e in range(n):
        off = e % 50
        kind = 0 if off < 1 else 1 if off < 4 else 2
        if kind == 0:
            p += 1
        elif kind == 1:
            a += 1
        kinds.append(kind)
        last_p.append(p)
        last_a.append(a)
    return kinds, last_p, last_a


def java_reverse(i: int) -> int:
    """``Integer.reverse`` then ``Math.abs`` with Java's 32-bit int overflow."""
    r = 0
    for b in range(32):
        r |= ((i >> b) & 1) << (31 - b)
    if r >= 1 << 31:
        r -= 1 << 32
    return r if r == -(1 << 31) else abs(r)


def event_ids_of(kind: int, rows: int) -> np.ndarray:
    per_epoch, first = {0: (1, 0), 1: (3, 1), 2: (46, 4)}[kind]
    j = np.arange(rows)
    return 50 * (j // per_epoch) + first + j % per_epoch


# -- the event stream ------------------------------------------------------------------------
def test_schema_and_proportions_per_50_events() -> None:
    ev = generate_events(NexmarkConfig(events=5000), 1000, 3500)
    assert ev.schema == EVENT_SCHEMA
    assert list(EVENT_SCHEMA) == ["event_type", "date_time", "person", "auction", "bid"]
    kinds = ev["event_type"].to_numpy().reshape(-1, 50)
    assert (kinds[:, 0] == 0).all() and (kinds[:, 1:4] == 1).all() and (kinds[:, 4:] == 2).all()
    # exactly one struct is set per row, the one of its kind
    for k, col in enumerate(["person", "auction", "bid"]):
        assert (ev[col].is_not_null() == (ev["event_type"] == k)).all()
        assert ev.filter(pl.col("event_type") != k).select(pl.col(col).struct.unnest()).null_count().sum_horizontal().item() == ev.filter(pl.col("event_type") != k).height * len(ev[col].struct.fields)  # fmt: skip


def test_event_times_follow_the_java_formula_and_are_monotone() -> None:
    for rate in (10_000, 7, 3_000_000.5):
        cfg = NexmarkConfig(events=20_000, rate=rate)
        ev = generate_events(cfg, 0, 20_000)
        delay = 1_000_000.0 / rate
        want = [BASE + int(e * delay) // 1000 for e in range(20_000)]
        got = ev["date_time"].dt.epoch("ms").to_list()
        assert got == want
        assert ev["date_time"].is_sorted()
        for col in ("person", "auction", "bid"):
            inner = ev.select(pl.col(col).struct.field("date_time").alias("in"), "date_time")
            inner = inner.drop_nulls()
            assert (inner[:, 0] == inner[:, 1]).all()


def test_default_rate_is_nexmark_flinks_10k_events_per_second() -> None:
    ev = generate_events(NexmarkConfig(events=20_001), 0, 20_001)
    span = ev["date_time"][-1] - ev["date_time"][0]
    assert span.total_seconds() == pytest.approx(2.0)


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = generate_events(NexmarkConfig(events=3000, seed=1), 0, 3000)
    b = generate_events(NexmarkConfig(events=3000, seed=1), 0, 3000)
    c = generate_events(NexmarkConfig(events=3000, seed=2), 0, 3000)
    assert a.equals(b)
    pa_, pc = a["bid"].struct.field("price"), c["bid"].struct.field("price")
    assert (pa_ != pc).mean() > 0.95
    assert (a["bid"].struct.field("extra") != c["bid"].struct.field("extra")).mean() > 0.95
    assert a["event_type"].equals(c["event_type"]) and a["date_time"].equals(c["date_time"])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.sampled_from([0, 12345, 2**64 - 1]),  # per-seed string pools take ~0.3 s to build
    cuts=st.lists(st.integers(0, 4000), min_size=3, max_size=3, unique=True).map(sorted),
)
def test_split_invariance(seed: int, cuts: list[int]) -> None:
    a, b, c = cuts
    cfg = NexmarkConfig(events=4000, seed=seed)
    whole = generate_events(cfg, a, c)
    parts = pl.concat([generate_events(cfg, a, b), generate_events(cfg, b, c)])
    assert whole.equals(parts)


def test_split_invariance_across_internal_chunks() -> None:
    cfg = NexmarkConfig(events=700_000)
    whole = generate_events(cfg, 1000, 530_000)  # crosses internal 2**17-event chunks
    assert whole.slice(261_000, 1500).equals(generate_events(cfg, 262_000, 263_500))
    assert whole.tail(10).equals(generate_events(cfg, 529_990, 530_000))


def test_empty_ranges() -> None:
    cfg = NexmarkConfig(events=0)
    assert generate_events(cfg).schema == EVENT_SCHEMA
    assert generate_events(NexmarkConfig(events=10), 7, 7).height == 0
    t = generate(cfg)
    assert (t.person.schema, t.auction.schema, t.bid.schema) == (PERSON_SCHEMA, AUCTION_SCHEMA, BID_SCHEMA)  # fmt: skip


def digest(df: pl.DataFrame) -> str:
    """A hash of the values of a table (numbers as int64 bytes, strings as text)."""
    h = hashlib.sha256()
    for name in df.columns:
        s = df[name]
        if s.dtype == pl.String:
            h.update("\n".join(s.to_list()).encode())
        else:
            h.update(s.to_physical().to_numpy().tobytes())
    return h.hexdigest()[:16]


def test_values_stay_those_of_the_first_release() -> None:
    """Golden digests: a faster generator must produce the very same events (bids
    across the internal steps of 16,384 rows, early ids, the largest seed)."""
    t = generate(NexmarkConfig(events=30_000, seed=5))
    assert [digest(x) for x in t] == ["a056d577e6547437", "0d4575a57917c295", "e5f969e8c9866872"]
    far = generate_kind(NexmarkConfig(events=10**9 + 20_000, seed=2**64 - 1), "bid", 10**9)
    assert digest(far) == "eb37fd3c5ca5ccc0"


# -- one kind --------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["person", "auction", "bid"]),
    cuts=st.lists(st.integers(0, 30_000), min_size=3, max_size=3, unique=True).map(sorted),
)
def test_one_kind_is_the_filtered_unnested_events(kind: str, cuts: list[int]) -> None:
    a, b, c = cuts
    cfg = NexmarkConfig(events=30_000, seed=12345)
    ev = generate_events(cfg, a, c)
    k = ["person", "auction", "bid"].index(kind)
    want = ev.filter(pl.col("event_type") == k).select(pl.col(kind).struct.unnest())
    assert generate_kind(cfg, kind, a, c).equals(want)
    parts = pl.concat([generate_kind(cfg, kind, a, b), generate_kind(cfg, kind, b, c)])
    assert parts.equals(want)


@pytest.mark.parametrize("kind", ["person", "auction", "bid"])
def test_one_kind_across_internal_chunks_and_steps(kind: str) -> None:
    cfg = NexmarkConfig(events=600_000, seed=2)
    got = generate_kind(cfg, kind, 7, 600_000)  # crosses the 2**19-event chunks
    want = getattr(generate(cfg), kind)
    skip = {"person": 1, "auction": 3, "bid": 3}[kind]  # events of the kind below id 7
    assert got.equals(want.slice(skip))


@pytest.mark.parametrize(
    "columns", [["auction", "price", "date_time"], ["extra", "bidder"], ["url"], ["date_time"]]
)
def test_bid_columns_are_a_projection(columns: list[str]) -> None:
    cfg = NexmarkConfig(events=40_000, seed=8)
    got = generate_kind(cfg, "bid", 1234, 40_000, columns=columns)
    want = generate_kind(cfg, "bid", 1234, 40_000).select(columns)
    assert got.columns == columns
    assert got.equals(want)


def test_projection_of_persons_and_auctions() -> None:
    cfg = NexmarkConfig(events=5000)
    t = generate(cfg)
    assert generate_kind(cfg, "person", columns=["name", "id"]).equals(
        t.person.select("name", "id")
    )
    assert generate_kind(cfg, "auction", columns=["seller"]).equals(t.auction.select("seller"))


def test_empty_kind_ranges_have_the_schema() -> None:
    cfg = NexmarkConfig(events=100)
    assert generate_kind(cfg, "bid", 50, 54).schema == BID_SCHEMA
    assert generate_kind(cfg, "person", 51, 100).height == 0
    assert generate_kind(cfg, "bid", 3, 3, columns=["price"]).schema == pl.Schema(
        {"price": pl.Int64}
    )


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"kind": "bids"}, "kind"),
        ({"kind": "bid", "columns": ["prize"]}, "prize"),
        ({"kind": "bid", "columns": ["price", "price"]}, "twice"),
        ({"kind": "bid", "columns": []}, "columns"),
        ({"kind": "bid", "columns": "price"}, "columns"),
        ({"kind": "bid", "start": 9, "stop": 2}, "start"),
    ],
)
def test_bad_kind_arguments_name_the_parameter(kwargs, word) -> None:
    with pytest.raises(sl.ConfigError, match=word):
        generate_kind(NexmarkConfig(events=10), **kwargs)


# -- the three tables ------------------------------------------------------------------------
def test_tables_are_the_unnested_events(tables) -> None:
    ev = generate_events(NexmarkConfig(events=N, seed=3))
    for k, name, tab in zip(range(3), ["person", "auction", "bid"], tables, strict=True):
        want = ev.filter(pl.col("event_type") == k).select(pl.col(name).struct.unnest())
        assert tab.schema == want.schema
        assert tab.equals(want)
    assert tables.person.schema == PERSON_SCHEMA
    assert tables.auction.schema == AUCTION_SCHEMA
    assert tables.bid.schema == BID_SCHEMA
    assert (tables.person.height, tables.auction.height, tables.bid.height) == (2000, 6000, 92000)


def test_ids_against_the_sequential_reference(tables) -> None:
    kinds, last_p, last_a = reference_ids(N)
    assert tables.person["id"].to_list() == [last_p[e] for e in range(N) if kinds[e] == 0]
    assert tables.auction["id"].to_list() == [last_a[e] for e in range(N) if kinds[e] == 1]
    lp, la = np.array(last_p), np.array(last_a)

    ae = event_ids_of(1, tables.auction.height)
    seller, p = tables.auction["seller"].to_numpy(), lp[ae]
    n_people = p - 999
    active = np.minimum(n_people, 1000)
    hot = (p - 1000) // 100 * 100 + 1000
    in_range = (seller >= 1000 + n_people - active) & (seller < 1000 + n_people + 10)
    assert (in_range | (seller == hot)).all()
    assert (seller <= p + 10).all()
    assert np.mean(seller == hot) == pytest.approx(0.75, abs=0.03)

    be = event_ids_of(2, tables.bid.height)
    bidder, p = tables.bid["bidder"].to_numpy(), lp[be]
    n_people = p - 999
    active = np.minimum(n_people, 1000)
    hot = (p - 1000) // 100 * 100 + 1001  # the second person of the hot block
    in_range = (bidder >= 1000 + n_people - active) & (bidder < 1000 + n_people + 10)
    assert (in_range | (bidder == hot)).all()
    assert np.mean(bidder == hot) == pytest.approx(0.75, abs=0.01)

    auction, a = tables.bid["auction"].to_numpy(), la[be]
    hot = (a - 1000) // 100 * 100 + 1000
    lo = np.maximum(a - 1000 - 100, 0) + 1000
    in_range = (auction >= lo) & (auction <= a + 10)
    assert (in_range | (auction == hot)).all()
    assert np.mean(auction == hot) == pytest.approx(0.5, abs=0.01)


def test_bidders_and_sellers_are_persons(tables) -> None:
    persons = tables.person["id"]
    last = persons.max()
    for col in (tables.auction["seller"], tables.bid["bidder"]):
        assert col.filter(col <= last).is_in(persons.implode()).all()
        assert (col <= last + 10).all()  # only the last events look ahead
    auctions, bid_auctions = tables.auction["id"], tables.bid["auction"]
    early = bid_auctions.filter(bid_auctions <= auctions.max())
    assert early.is_in(auctions.implode()).all()


def test_prices_categories_and_expiry(tables) -> None:
    price = tables.bid["price"].to_numpy()
    assert price.min() >= 100 and price.max() <= 100_000_000
    u = np.log10(price / 100) / 6  # price = round(10 ** (6 U) * 100)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert np.mean(u < q) == pytest.approx(q, abs=0.01)
    auc = tables.auction
    assert (auc["reserve"] - auc["initial_bid"] >= 100).all()
    counts = auc["category"].value_counts()
    assert set(counts["category"]) == {10, 11, 12, 13, 14}
    assert counts["count"].min() > 6000 / 5 * 0.9

    ae = event_ids_of(1, auc.height)
    ts = np.array([BASE + int(e * 100.0) // 1000 for e in ae])
    horizon = np.array([BASE + int((e + 1666) * 100.0) // 1000 for e in ae]) - ts
    length = (auc["expires"] - auc["date_time"]).dt.total_milliseconds().to_numpy()
    assert (length >= 1).all() and (length <= 2 * horizon).all()
    assert length.mean() == pytest.approx(horizon.mean(), rel=0.05)


def test_strings_follow_nexmark_flink(tables) -> None:
    p, a, b = tables.person, tables.auction, tables.bid
    first, last = zip(*(n.split(" ") for n in p["name"]), strict=True)
    assert set(first) <= FIRST_NAMES and set(last) <= LAST_NAMES
    assert len(set(p["name"])) == len(FIRST_NAMES) * len(LAST_NAMES)
    assert set(p["city"]) == CITIES and set(p["state"]) == STATES
    assert p["credit_card"].str.contains(r"^\d{4} \d{4} \d{4} \d{4}$").all()
    assert p["email_address"].str.contains(r"^([a-z][a-z ]{0,4}[a-z]|[a-z])?@([a-z][a-z ]{0,2}[a-z]|[a-z])?\.com$").all()  # fmt: skip
    for col, longest in ((a["item_name"], 19), (a["description"], 99)):
        assert col.str.contains(r"^[a-z ]*$").all()
        assert (col == col.str.strip_chars(" ")).all()  # trimmed
        assert col.str.len_bytes().max() <= longest
        assert col.str.len_bytes().mean() > (3 + longest) / 2 - 2  # 3 + U[0, max - 3), trimmed
        spaces = col.str.count_matches(" ").sum() / col.str.len_bytes().sum()
        # a space with p = 1/13, fewer once the ends are trimmed (more so in short strings)
        assert 1 / 13 - (0.004 if longest > 50 else 0.02) < spaces < 1 / 13
    assert pl.concat([p["extra"], a["extra"], b["extra"]]).str.contains(r"^[a-z]*$").all()


def test_extra_pads_rows_to_the_average_sizes(tables) -> None:
    p, a, b = tables.person, tables.auction, tables.bid

    def ln(s: pl.Series) -> np.ndarray:
        return s.str.len_bytes().cast(pl.Int64).to_numpy()

    person_cols = ["name", "email_address", "credit_card", "city", "state", "extra"]
    sizes = {
        200: 8 + sum(ln(p[c]) for c in person_cols),
        500: 8 + ln(a["item_name"]) + ln(a["description"]) + 40 + ln(a["extra"]),
        100: 32 + ln(b["extra"]),
    }
    for avg, size in sizes.items():
        assert size.mean() == pytest.approx(avg, rel=0.01)
        assert size.min() >= avg * 0.8 - 1 and size.max() <= avg * 1.2 + 1


def test_channels_and_urls(tables) -> None:
    b = tables.bid
    hot = b["channel"].is_in(list(HOT_CHANNELS))
    assert hot.mean() == pytest.approx(0.5, abs=0.01)
    assert set(b.filter(hot)["channel"]) == HOT_CHANNELS
    assert b.group_by("channel").agg(pl.col("url").n_unique())["url"].max() == 1
    url = r"^https://www\.nexmark\.com/[a-z_]{3,4}/[a-z_]{3,4}/[a-z_]{3,4}/item\.htm\?query=1"
    assert b.filter(hot)["url"].str.contains(url + "$").all()
    cold = b.filter(~hot).unique("channel")
    assert cold["channel"].str.contains(r"^channel-\d+$").all()
    assert cold.height > 9000  # ~46k draws from 10,000 channels
    with_id = cold["url"].str.contains("&channel_id=")
    assert with_id.mean() == pytest.approx(0.9, abs=0.02)
    assert cold.filter(~with_id)["url"].str.contains(url + "$").all()
    for ch, u in cold.filter(with_id).select("channel", "url").iter_rows():
        i = int(ch.removeprefix("channel-"))
        assert u.endswith(f"&channel_id={java_reverse(i)}")
        assert u.removesuffix(f"&channel_id={java_reverse(i)}").split("/")[-1] == "item.htm?query=1"
    assert java_reverse(1) == -(2**31) and java_reverse(2) == 2**30


def test_parquet_round_trip(tmp_path) -> None:
    cfg = NexmarkConfig(events=30_000, seed=5)
    paths = write_parquet(cfg, tmp_path / "out")
    assert sorted(paths) == ["auction", "bid", "person"]
    want = generate(cfg)
    for name, schema in (
        ("person", PERSON_SCHEMA),
        ("auction", AUCTION_SCHEMA),
        ("bid", BID_SCHEMA),
    ):
        assert paths[name] == tmp_path / "out" / f"{name}.parquet"
        got = pl.read_parquet(paths[name])
        assert got.schema == schema
        assert got.equals(getattr(want, name))
    # another reader sees the same data
    duckdb = pytest.importorskip("duckdb")
    ((n, total, first),) = duckdb.sql(
        f"SELECT count(*), sum(price), min(date_time) FROM '{paths['bid']}'"
    ).fetchall()
    assert (n, total) == (want.bid.height, want.bid["price"].sum())
    assert first == want.bid["date_time"].min()


def test_parquet_of_zero_events_has_the_schemas(tmp_path) -> None:
    paths = write_parquet(NexmarkConfig(events=0), tmp_path)
    assert pl.read_parquet(paths["bid"]).schema == BID_SCHEMA


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"events": -1}, "events"),
        ({"events": 1.5}, "events"),
        ({"events": "10"}, "events"),
        ({"events": 10, "seed": -1}, "seed"),
        ({"events": 10, "seed": 2**64}, "seed"),
        ({"events": 10, "seed": "a"}, "seed"),
        ({"events": 10, "seed": True}, "seed"),
        ({"events": 10, "rate": 0}, "rate"),
        ({"events": 10, "rate": -5}, "rate"),
        ({"events": 10, "rate": math.nan}, "rate"),
        ({"events": 10, "rate": math.inf}, "rate"),
        ({"events": 10, "rate": "fast"}, "rate"),
        ({"events": 10**9, "rate": 1e-6}, "rate"),  # times past the int64 range
    ],
)
def test_bad_config_names_the_parameter(kwargs, word) -> None:
    with pytest.raises(sl.ConfigError, match=word):
        NexmarkConfig(**kwargs)


def test_bad_ranges_and_paths(tmp_path) -> None:
    cfg = NexmarkConfig(events=10)
    with pytest.raises(sl.ConfigError, match="start"):
        generate_events(cfg, 5, 3)
    with pytest.raises(sl.ConfigError, match="start"):
        generate_events(cfg, -1, 3)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(sl.ConfigError, match="not a directory"):
        write_parquet(cfg, f)
