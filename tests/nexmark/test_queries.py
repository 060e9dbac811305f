"""Every Nexmark query against the same query in DuckDB SQL (batch ground truth).

The engine runs each query on generated events (one source per kind of event
inside the flow) at parallelism 1 and 4; DuckDB runs the
nexmark-flink SQL, adapted to its dialect, over the Parquet files of the same
events. Results are compared as multisets of rows after end of input.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

import sluice as sl
from sluice.nexmark import source as nsrc
from sluice.nexmark.generator import NexmarkConfig, write_parquet
from sluice.nexmark.queries import QUERIES, SIDE_INPUT, WATERMARK, NexmarkInput, run_query
from tests.helpers import StopAfter, same_rows

EVENTS = 6_000
SEED = 7
#: event-time rates of the two test datasets: 100 events/s spreads the events
#: over a minute (several 10 s windows, hops and sessions); 0.05 events/s over
#: 33 hours (two days, every hour of the day, sparse windows)
RATES = {"minute": 100.0, "days": 0.05}

_RANKS = """
    count(*) AS total_bids,
    count(*) FILTER (WHERE price < 10000) AS rank1_bids,
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids
"""
_DISTINCT = """,
    count(DISTINCT bidder) AS total_bidders,
    count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
    count(DISTINCT auction) AS total_auctions,
    count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
"""

#: nexmark-flink's SQL in DuckDB's dialect (times as epoch milliseconds where
#: window arithmetic is needed).
SQL: dict[str, str] = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, CAST(0.908 * price AS DOUBLE) AS price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """
        SELECT P.name, P.city, P.state, A.id
        FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    "q5": """
        WITH b AS (SELECT auction, epoch_ms(date_time) AS t FROM bid),
        w AS (SELECT auction, (t - t % 2000) - k * 2000 AS ws FROM b, range(5) r(k)),
        c AS (SELECT auction, ws, count(*) AS num FROM w GROUP BY auction, ws),
        m AS (SELECT ws, max(num) AS maxn FROM c GROUP BY ws)
        SELECT c.auction, c.num FROM c JOIN m USING (ws) WHERE c.num >= m.maxn""",
    "q7": """
        WITH b AS (SELECT *, epoch_ms(date_time) AS t FROM bid),
        m AS (SELECT max(price) AS maxprice, (t - t % 10000) + 10000 AS we
              FROM b GROUP BY t - t % 10000)
        SELECT b.auction, b.price, b.bidder, b.date_time, b.extra
        FROM b JOIN m ON b.price = m.maxprice
        WHERE b.t BETWEEN m.we - 10000 AND m.we""",
    "q8": """
        WITH p AS (SELECT DISTINCT id, name, epoch_ms(date_time) // 10000 AS w FROM person),
        a AS (SELECT DISTINCT seller, epoch_ms(date_time) // 10000 AS w FROM auction)
        SELECT p.id, p.name, epoch_ms(p.w * 10000) AS stime
        FROM p JOIN a ON p.id = a.seller AND p.w = a.w""",
    "q11": """
        WITH b AS (SELECT bidder, epoch_ms(date_time) AS t FROM bid),
        s AS (SELECT bidder, t,
                CASE WHEN t - lag(t) OVER (PARTITION BY bidder ORDER BY t) <= 10000
                     THEN 0 ELSE 1 END AS new FROM b),
        g AS (SELECT bidder, t, sum(new) OVER (PARTITION BY bidder ORDER BY t
                ROWS UNBOUNDED PRECEDING) AS sid FROM s)
        SELECT bidder, count(*) AS bid_count, epoch_ms(min(t)) AS starttime,
               epoch_ms(max(t) + 10000) AS endtime
        FROM g GROUP BY bidder, sid""",
    "q13": """
        SELECT b.auction, b.bidder, b.price, b.date_time, s.value
        FROM bid b JOIN side s ON b.auction % 10000 = s.key""",
    "q14": """
        SELECT auction, bidder, CAST(0.908 * price AS DOUBLE) AS price,
            CASE WHEN hour(date_time) >= 8 AND hour(date_time) <= 18 THEN 'dayTime'
                 WHEN hour(date_time) <= 6 OR hour(date_time) >= 20 THEN 'nightTime'
                 ELSE 'otherTime' END AS bid_time_type,
            date_time, extra,
            length(extra) - length(replace(extra, 'c', '')) AS c_counts
        FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": f"""
        SELECT strftime(date_time, '%Y-%m-%d') AS day, {_RANKS} {_DISTINCT}
        FROM bid GROUP BY 1""",
    "q16": f"""
        SELECT channel, strftime(date_time, '%Y-%m-%d') AS day,
            max(strftime(date_time, '%H:%M')) AS minute, {_RANKS} {_DISTINCT}
        FROM bid GROUP BY channel, 2""",
    "q17": f"""
        SELECT auction, strftime(date_time, '%Y-%m-%d') AS day, {_RANKS},
            min(price) AS min_price, max(price) AS max_price,
            sum(price) // count(*) AS avg_price, sum(price) AS sum_price
        FROM bid GROUP BY auction, 2""",
    "q20": """
        SELECT b.auction, b.bidder, b.price, b.channel, b.url, b.date_time AS bid_date_time,
            b.extra AS bid_extra, a.item_name, a.description, a.initial_bid, a.reserve,
            a.date_time AS auction_date_time, a.expires, a.seller, a.category,
            a.extra AS auction_extra
        FROM bid b JOIN auction a ON b.auction = a.id WHERE a.category = 10""",
    "q21": """
        SELECT auction, bidder, price, channel,
            CASE WHEN lower(channel) = 'apple' THEN '0'
                 WHEN lower(channel) = 'google' THEN '1'
                 WHEN lower(channel) = 'facebook' THEN '2'
                 WHEN lower(channel) = 'baidu' THEN '3'
                 ELSE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) END AS channel_id
        FROM bid
        WHERE regexp_matches(url, '(&|^)channel_id=')
           OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """
        SELECT auction, bidder, price, channel, string_split(url, '/')[4] AS dir1,
            string_split(url, '/')[5] AS dir2, string_split(url, '/')[6] AS dir3
        FROM bid""",
}
SQL["q4"] = """
    SELECT category AS id, CAST(sum(final) // count(*) AS BIGINT) AS final FROM (
        SELECT A.id, A.category, max(B.price) AS final
        FROM auction A JOIN bid B ON A.id = B.auction
        WHERE B.date_time BETWEEN A.date_time AND A.expires
        GROUP BY A.id, A.category)
    GROUP BY category"""
#: q6 on closed auctions (see the q6 docstring): per seller, in close order
#: (expires, id), the average of the last 11 winning prices
SQL["q6"] = """
    WITH c AS (SELECT A.id, A.seller, A.expires, B.price FROM auction A JOIN bid B
               ON A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires),
    w AS (SELECT id, seller, expires, max(price) AS price FROM c GROUP BY id, seller, expires)
    SELECT seller, CAST(sum(price) OVER f // count(*) OVER f AS BIGINT) AS avg_price
    FROM w WINDOW f AS (PARTITION BY seller ORDER BY expires, id
                        ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)"""
SQL["q9"] = """
    SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller,
        category, extra, auction, bidder, price, bid_date_time, bid_extra
    FROM (SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time,
            B.extra AS bid_extra,
            ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC)
                AS rownum
          FROM auction A JOIN bid B ON A.id = B.auction
          WHERE B.date_time BETWEEN A.date_time AND A.expires)
    WHERE rownum <= 1"""
SQL["q18"] = """
    SELECT auction, bidder, price, channel, url, date_time, extra
    FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC)
            AS rn FROM bid)
    WHERE rn <= 1"""
SQL["q19"] = """
    SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC)
        AS rank_number FROM bid)
    WHERE rank_number <= 10"""
#: ROW_NUMBER among equal prices is arbitrary (in Flink and DuckDB alike):
#: compare the columns that are determined
DETERMINED = {"q19": ["auction", "rank_number", "price"]}
SQL["q10"] = """
    SELECT auction, bidder, price, date_time, extra,
        strftime(date_time, '%Y-%m-%d') AS dt, strftime(date_time, '%H:%M') AS hm
    FROM bid"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, rate in RATES.items():
        d = tmp_path_factory.mktemp(f"nexmark-{name}")
        write_parquet(NexmarkConfig(events=EVENTS, seed=SEED, rate=rate), d)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def data(datasets: dict[str, Path]) -> Path:
    return datasets["minute"]


def _duckdb(data: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect()
    for t in ("person", "auction", "bid"):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data / (t + '.parquet')}')")
    con.execute(
        f"CREATE VIEW side AS SELECT * FROM read_csv('{SIDE_INPUT}', header = true, "
        f"columns = {{'key': 'BIGINT', 'value': 'VARCHAR'}})"
    )
    return con.sql(sql).pl()


def _normal(df: pl.DataFrame) -> pl.DataFrame:
    """Times as epoch milliseconds, so engine (ms) and DuckDB (us) rows compare."""
    return df.with_columns(
        pl.col(c).dt.epoch("ms") for c, t in df.schema.items() if isinstance(t, pl.Datetime)
    ).with_columns(pl.col(pl.Float64).round(6))


def _engine(query: str, parallelism: int, rate: float = RATES["minute"]) -> pl.DataFrame:
    flow = sl.Flow(f"nexmark-{query}", parallelism=parallelism)
    out = sl.sinks.collect()
    inp = NexmarkInput.generated(flow, events=EVENTS, seed=SEED, rate=rate)
    result = QUERIES[query].build(inp)
    result.sink(out)
    flow.run(timeout=120)
    if result.upsert_key:  # an updating result: its final state after end of input
        return sl.materialize(out, list(result.upsert_key))
    return out.to_polars()


def _check(query: str, got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.columns == want.columns, f"{query}: columns {got.columns} != {want.columns}"
    if query in DETERMINED:
        got, want = got.select(DETERMINED[query]), want.select(DETERMINED[query])
    assert want.height > 0, f"{query}: the ground truth is empty; the test would prove nothing"
    g, w = _normal(got), _normal(want)
    assert same_rows(g, w), (
        f"{query}: {g.height} rows vs {w.height} expected; "
        f"extra: {g.join(w, on=g.columns, how='anti').head(5)} "
        f"missing: {w.join(g, on=w.columns, how='anti').head(5)}"
    )


@pytest.mark.parametrize("dataset", list(RATES))
@pytest.mark.parametrize("parallelism", [1, 4])
@pytest.mark.parametrize("query", [q for q in SQL if q != "q10"])
def test_query_matches_duckdb(
    datasets: dict[str, Path], query: str, parallelism: int, dataset: str
) -> None:
    got = _engine(query, parallelism, RATES[dataset])
    want = _duckdb(datasets[dataset], SQL[query])
    if (query, dataset) == ("q8", "days"):
        # one event every 20 s: nobody registers and sells within one 10 s
        # window; the engine must find nothing either (the minute set has matches)
        assert want.height == 0 and got.height == 0
        return
    _check(query, got, want)


def test_q10_writes_partitioned_files(datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q10"
    data = datasets["days"]
    run_query("q10", data_dir=data, out=out, parallelism=2)
    got = pl.concat(
        [
            pl.read_csv(p, try_parse_dates=False).with_columns(
                pl.lit(p.parent.parent.name.removeprefix("dt=")).alias("dt"),
                pl.lit(p.parent.name.removeprefix("hm=")).alias("hm"),
            )
            for p in out.glob("dt=*/hm=*/*.csv")
        ]
    )
    want = _duckdb(data, SQL["q10"])
    got = got.with_columns(pl.col("date_time").str.to_datetime(time_unit="ms"))
    _check("q10", got.select(want.columns), want)


def test_q12_counts_every_bid_once(data: Path) -> None:
    got = _engine("q12", 2)
    assert got.columns == ["bidder", "bid_count", "starttime", "endtime"]
    want = _duckdb(data, "SELECT bidder, count(*) AS n FROM bid GROUP BY bidder")
    per_bidder = got.group_by("bidder").agg(pl.col("bid_count").sum().alias("n"))
    assert same_rows(per_bidder, want)


@pytest.mark.parametrize("query", [q for q in SQL if q != "q10"])
def test_parquet_input_with_pushdown(data: Path, query: str) -> None:
    """Reading the files of `sluice nexmark generate`, only the columns each
    query declares, gives the DuckDB result too."""
    flow = sl.Flow("files")
    out = sl.sinks.collect()
    result = QUERIES[query].build(NexmarkInput.files(flow, data, QUERIES[query].columns))
    result.sink(out)
    flow.run(timeout=60)
    got = sl.materialize(out, list(result.upsert_key)) if result.upsert_key else out.to_polars()
    _check(query, got, _duckdb(data, SQL[query]))


def test_run_query_measures(data: Path) -> None:
    r = run_query("q1", data_dir=data)
    assert r.events == EVENTS
    assert r.rows == _duckdb(data, "SELECT count(*) AS n FROM bid")["n"][0]
    assert r.events_per_second > 0


def test_unknown_query() -> None:
    with pytest.raises(sl.ConfigError, match="unknown query 'q99'"):
        run_query("q99", events=10)


# -- q6: a hand-written case against a brute force, and a stop/resume --------------------------
_S = 1_000  # ms


def _q6_case() -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int]]]:
    """Auctions ``(id, seller, date_time, expires)`` and bids ``(auction, price,
    date_time)`` in ms. Seller 7 closes 14 auctions (more than the 11-row frame),
    ids 4 and 5 at the same time, and auction 20 gets its highest bid after it
    expired; seller 8's auction 30 gets a bid only after it expired and 31 one
    before it opened (neither counts)."""
    auctions = [(i, 7, i * _S, (100 + (13 - i) * 5) * _S) for i in range(1, 14)]
    auctions[4] = (5, 7, 5 * _S, auctions[3][3])
    auctions += [(20, 7, _S, 50 * _S), (30, 8, 2 * _S, 40 * _S), (31, 8, 3 * _S, 45 * _S)]
    bids = [
        (i, (i * 37 + k * 53) % 101 + 1, (i + 1 + k) * _S) for i in range(1, 14) for k in range(3)
    ]
    bids += [(20, 30, 10 * _S), (20, 999, 60 * _S), (30, 5, 45 * _S)]
    bids += [(31, 500, _S), (31, 17, 5 * _S)]
    return auctions, sorted(bids, key=lambda b: b[2])


def _q6_brute(
    auctions: list[tuple[int, int, int, int]], bids: list[tuple[int, int, int]]
) -> dict[int, list[int]]:
    """Per seller, the expected ``avg_price`` values in close order."""
    won: dict[int, tuple[int, int, int]] = {}
    for aid, seller, start, expires in auctions:
        prices = [p for b, p, t in bids if b == aid and start <= t <= expires]
        if prices:
            won[aid] = (seller, expires, max(prices))
    out: dict[int, list[int]] = {}
    for aid in sorted(won, key=lambda a: (won[a][1], a)):
        seller, _, price = won[aid]
        out.setdefault(seller, []).append(price)
    frames = {s: [ps[max(0, i - 10) : i + 1] for i in range(len(ps))] for s, ps in out.items()}
    return {s: [sum(f) // len(f) for f in fs] for s, fs in frames.items()}


@pytest.mark.parametrize("parallelism", [1, 3])
def test_q6_hand_written_case_matches_brute_force(parallelism: int) -> None:
    auctions, bids = _q6_case()
    frames = {
        "auction": pl.DataFrame(
            auctions, schema=["id", "seller", "date_time", "expires"], orient="row"
        ).with_columns(pl.col("date_time", "expires").cast(pl.Datetime("ms"))),
        "bid": pl.DataFrame(
            bids, schema=["auction", "price", "date_time"], orient="row"
        ).with_columns(pl.col("date_time").cast(pl.Datetime("ms"))),
    }
    flow = sl.Flow("q6-case", parallelism=parallelism)
    out = sl.sinks.collect()

    def make(kind: str) -> sl.Stream:
        src = sl.sources.memory(frames[kind], batch_size=4)
        return flow.source(src, name=kind, time="date_time", watermark="4s")

    QUERIES["q6"].build(NexmarkInput(flow, make)).sink(out)
    flow.run(timeout=60)
    got = out.to_polars()
    assert got.columns == ["seller", "avg_price"]
    want = _q6_brute(auctions, bids)
    assert len(want[7]) == 14 and 8 in want  # the case covers what it says
    # an append stream in close order: each seller's rows come out in that order
    per_seller = {s: got.filter(pl.col("seller") == s)["avg_price"].to_list() for s in want}
    assert per_seller == want
    assert got.height == sum(map(len, want.values()))


def _small_batches(flow: sl.Flow) -> NexmarkInput:
    """The minute dataset's events in batches of 200, so that the watermark and
    the output advance in many steps (``NexmarkInput.generated`` with small batches)."""
    src = nsrc.nexmark(events=EVENTS, seed=SEED, rate=RATES["minute"], batch_size=200)
    events = flow.source(src, time="date_time", watermark=WATERMARK, max_batch_rows=200)
    split = {"auction": nsrc.auctions, "bid": nsrc.bids}
    return NexmarkInput(flow, lambda kind: split[kind](events))


def test_q6_stop_and_resume_from_checkpoints_is_exact(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    """Stopped after a few output batches and resumed from the stop's checkpoint,
    again and again: the closing auctions and per-seller frames survive."""
    parts = []
    for attempt in range(40):
        flow = sl.Flow("q6-resume")
        sink = StopAfter(flow, 2 + attempt % 3)
        QUERIES["q6"].build(_small_batches(flow)).sink(sink)
        res = flow.run(parallelism=2, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints
    else:
        pytest.fail("the job never finished")
    assert attempt >= 2, "the job was stopped and resumed several times"
    got = pl.concat([p for p in parts if p.height])
    _check("q6", got, _duckdb(datasets["minute"], SQL["q6"]))


def _bids_with_urls(urls: list[str | None], channels: list[str] | str) -> pl.DataFrame:
    """One bid per URL, a second apart (for the URL-parsing queries)."""
    return pl.DataFrame(
        {
            "auction": range(len(urls)),
            "bidder": 1,
            "price": 2,
            "channel": channels,
            "url": urls,
            "date_time": pl.datetime_range(
                pl.datetime(2015, 7, 15),
                pl.datetime(2015, 7, 15, 0, 0, len(urls) - 1),
                "1s",
                eager=True,
            ),
        }
    )


def _run_on_bids(query: str, bids: pl.DataFrame) -> pl.DataFrame:
    flow = sl.Flow(f"{query}-edges")
    out = sl.sinks.collect()
    inp = NexmarkInput(flow, lambda kind: flow.source(sl.sources.memory(bids), time="date_time"))
    QUERIES[query].build(inp).sink(out)
    flow.run()
    return out.to_polars()


def test_q21_channel_id_is_regexp_extract_on_edge_case_urls() -> None:
    urls = [
        "channel_id=7&x=1",  # at the start (the ^ branch)
        "https://a/b?query=1&channel_id=42",
        "https://a/b?channel_id=5",  # after '?', not '&' or the start: no match
        "https://a/b?x=1&xchannel_id=9&channel_id=3&channel_id=4",  # the first match
        "https://a/b?x=1&channel_id=",  # empty value
        "https://a/b?x=1",
        None,
    ]
    channels = ["channel-1", "channel-2", "Google", "channel-3", "x", "baidu", "APPLE"]
    bids = _bids_with_urls(urls, channels)
    got = _run_on_bids("q21", bids)
    expected = duckdb.sql(
        """
        SELECT auction, bidder, price, channel,
            CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1'
                WHEN 'facebook' THEN '2' WHEN 'baidu' THEN '3'
                ELSE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) END
                AS channel_id
        FROM bids
        WHERE regexp_matches(url, '(&|^)channel_id=([^&]*)')
            OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')
        """
    ).pl()
    assert got.filter(pl.col("auction") == 4)["channel_id"].to_list() == [""]  # as Flink's
    assert same_rows(expected, got)


def test_q22_directories_are_split_index_on_edge_case_urls() -> None:
    urls = [
        "https://www.nexmark.com/a/b/c/item.htm?query=1",
        "https://www.nexmark.com/a/b/c",  # exactly six pieces
        "https://www.nexmark.com/a/b",  # dir3 missing
        "https://host",  # no directory at all
        "a/b/c/d/e/f/g/h",  # more pieces than read: the rest is not appended
        "////",  # empty pieces
        "",
        None,
    ]
    bids = _bids_with_urls(urls, "c")
    got = _run_on_bids("q22", bids)
    expected = duckdb.sql(
        """
        SELECT auction, bidder, price, channel, string_split(url, '/')[4] AS dir1,
            string_split(url, '/')[5] AS dir2, string_split(url, '/')[6] AS dir3
        FROM bids
        """
    ).pl()
    assert got.filter(pl.col("auction") == 4).row(0)[-3:] == ("d", "e", "f")
    assert same_rows(expected, got)
