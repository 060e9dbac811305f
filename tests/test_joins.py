"""Joins (regular, interval, window, lookup) against DuckDB as ground truth.

Each test runs the same join in Sluice (at parallelism 1 and 4) and in DuckDB
SQL over the same rows, and compares the results as multisets.
"""

from __future__ import annotations

import random
from typing import Any

import duckdb
import polars as pl
import pytest

import sluice as sl
from tests.helpers import run_collect, same_rows


def sql(query: str, **tables: pl.DataFrame) -> pl.DataFrame:
    con = duckdb.connect()
    for name, df in tables.items():
        con.register(name, df.to_arrow())
    return con.sql(query).pl()


def rows_of(df: pl.DataFrame) -> list[dict[str, Any]]:
    return df.to_dicts()


def sorted_by_time(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("t", maintain_order=True)


def gen_left(n: int, keys: int, seed: int, tmax: int = 2_000) -> pl.DataFrame:
    r = random.Random(seed)
    return sorted_by_time(
        pl.DataFrame(
            {
                "k": [None if r.random() < 0.05 else r.randrange(keys) for _ in range(n)],
                "a": [r.randrange(1000) for _ in range(n)],
                "t": [r.randrange(tmax // 10) * 10 for _ in range(n)],
            },
            schema={"k": pl.Int64, "a": pl.Int64, "t": pl.Int64},
        )
    )


def gen_right(n: int, keys: int, seed: int, tmax: int = 2_000) -> pl.DataFrame:
    r = random.Random(seed)
    return sorted_by_time(
        pl.DataFrame(
            {
                "key": [None if r.random() < 0.05 else r.randrange(keys) for _ in range(n)],
                "b": [f"b{r.randrange(100)}" for _ in range(n)],
                "a": [r.randrange(1000) for _ in range(n)],
                "t": [r.randrange(tmax // 10) * 10 for _ in range(n)],
            },
            schema={"key": pl.Int64, "b": pl.String, "a": pl.Int64, "t": pl.Int64},
        )
    )


L = gen_left(400, 25, 1)
R = gen_right(300, 25, 2)


def sources(f: sl.Flow, left: pl.DataFrame, right: pl.DataFrame, bs: int = 17):
    ls = f.source(sl.sources.memory(left, batch_size=bs), time="t")
    rs = f.source(sl.sources.memory(right, batch_size=bs), time="t")
    return ls, rs


# -- regular join ---------------------------------------------------------------------
@pytest.mark.parametrize("parallelism", [1, 4])
def test_regular_inner_join_matches_duckdb(parallelism: int) -> None:
    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, L, R)
        return ls.join(rs, left_on="k", right_on="key").with_columns(ot=pl.col("__time"))

    got = run_collect(build, parallelism=parallelism)
    want = sql(
        """SELECT l.k, l.a, l.t, r.b, r.a AS a_right, r.t AS t_right,
                  greatest(l.t, r.t) AS ot
           FROM l JOIN r ON l.k = r.key""",
        l=L,
        r=R,
    )
    assert got.columns == ["k", "a", "t", "b", "a_right", "t_right", "ot"]
    assert want.height > 1000  # duplicates per key on both sides
    assert same_rows(got, want)


@pytest.mark.parametrize("parallelism", [1, 4])
def test_regular_join_multi_key_with_castable_dtypes(parallelism: int) -> None:
    r = random.Random(5)
    left = pl.DataFrame(
        {"a": [r.randrange(-3, 3) for _ in range(200)], "b": [r.choice("xy") for _ in range(200)]},
        schema={"a": pl.Int32, "b": pl.String},
    ).with_row_index("i")
    right = pl.DataFrame(
        {
            "a2": [r.randrange(-3, 3) for _ in range(150)],
            "b2": [r.choice(["x", "y", None]) for _ in range(150)],
        },
        schema={"a2": pl.Int64, "b2": pl.Categorical},
    ).with_row_index("j")

    def build(f: sl.Flow) -> sl.Stream:
        ls = f.source(sl.sources.memory(left, batch_size=9))
        rs = f.source(sl.sources.memory(right, batch_size=11))
        return ls.join(rs, left_on=["a", "b"], right_on=["a2", "b2"])

    got = run_collect(build, parallelism=parallelism)
    want = sql(
        "SELECT l.i, l.a::BIGINT AS a, l.b, r.j FROM l JOIN r ON l.a = r.a2 AND l.b = r.b2",
        l=left,
        r=right.with_columns(pl.col("b2").cast(pl.String)),
    )
    assert same_rows(got.with_columns(pl.col("a").cast(pl.Int64)), want)


# -- interval join --------------------------------------------------------------------
INTERVAL_SQL = """
SELECT COALESCE(l.k, r.key) AS k, l.a, l.t, r.b, r.a AS a_right, r.t AS t_right
FROM l {how} JOIN r ON l.k = r.key AND r.t BETWEEN l.t + {lo} AND l.t + {up}
"""


@pytest.mark.parametrize("parallelism", [1, 4])
@pytest.mark.parametrize("how", ["inner", "left", "right", "full"])
@pytest.mark.parametrize(("lo", "up"), [(-20, 30), (10, 40), (-50, -10)])
def test_interval_join_matches_duckdb(parallelism: int, how: str, lo: int, up: int) -> None:
    left, right = gen_left(300, 12, 3, 1_000), gen_right(300, 12, 4, 1_000)

    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, left, right, bs=13)
        return ls.interval_join(rs, left_on="k", right_on="key", lower=lo, upper=up, how=how)

    got = run_collect(build, parallelism=parallelism)
    want = sql(INTERVAL_SQL.format(how=how.upper(), lo=lo, up=up), l=left, r=right)
    # times are multiples of 10, so many pairs sit exactly on a bound
    on_bound = sql(
        f"SELECT count(*) AS n FROM l JOIN r ON l.k = r.key "
        f"AND (r.t = l.t + {lo} OR r.t = l.t + {up})",
        l=left,
        r=right,
    ).item()
    assert on_bound > 10
    assert same_rows(got, want)


@pytest.mark.parametrize("how", ["inner", "left", "full"])
def test_interval_join_on_out_of_order_input_matches_duckdb(how: str) -> None:
    # times move forward with a disorder of up to 200 ms and the watermark lags
    # by 250 ms: nothing is late, many small batches are stored as many chunks,
    # and each watermark expires part of a chunk
    r = random.Random(11)

    def side(n: int, seed_col: str) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "k": [r.randrange(8) for _ in range(n)],
                seed_col: [r.randrange(1000) for _ in range(n)],
                "t": [max(0, i * 3 + r.randrange(-200, 1)) for i in range(n)],
            }
        )

    left, right = side(1_500, "a"), side(1_200, "b").rename({"k": "key"})

    def build(f: sl.Flow) -> sl.Stream:
        ls = f.source(sl.sources.memory(left, batch_size=7), time="t", watermark=250)
        rs = f.source(sl.sources.memory(right, batch_size=9), time="t", watermark=250)
        return ls.interval_join(rs, left_on="k", right_on="key", lower=-40, upper=25, how=how)

    got = run_collect(build)
    want = sql(
        f"""SELECT COALESCE(l.k, r.key) AS k, l.a, l.t, r.b, r.t AS t_right
            FROM l {how.upper()} JOIN r ON l.k = r.key AND r.t BETWEEN l.t - 40 AND l.t + 25""",
        l=left,
        r=right,
    )
    assert want.height > 2_000
    assert same_rows(got, want)


def test_interval_join_output_time_and_held_back_watermark() -> None:
    left = pl.DataFrame({"k": [1, 2], "t": [100, 200]})
    right = pl.DataFrame({"k": [1, 3], "t": [150, 900]})

    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, left, right, bs=1)
        j = ls.interval_join(rs, on="k", lower=0, upper=100, how="full")
        # a downstream window sees no late row: unmatched rows keep their own time
        return j.with_columns(ot=pl.col("__time"))

    got = run_collect(build)
    want = pl.DataFrame(
        {"k": [1, 2, 3], "t": [100, 200, None], "t_right": [150, None, 900], "ot": [150, 200, 900]}
    )
    assert same_rows(got, want)

    flow = sl.Flow("down")
    out, late = sl.sinks.collect(), sl.sinks.collect()
    ls, rs = sources(flow, left, right, bs=1)
    w = (
        ls.interval_join(rs, on="k", lower=0, upper=100, how="full")
        .key_by("k")
        .window(sl.windows.tumbling("1s"))
        .agg(n=sl.agg.count())
    )
    w.sink(out)
    w.late().sink(late)
    flow.run()
    assert late.to_polars().height == 0
    assert out.to_polars().get_column("n").sum() == 3


def test_interval_join_late_rows_are_dropped_and_counted() -> None:
    # one source feeds both sides (so both see the same watermarks, in order);
    # the watermark is max time so far - 1: a row with time < max so far is late
    r = random.Random(7)
    rows = []
    hi = 0
    for i in range(400):
        t = max(0, hi + r.randrange(-60, 40))
        hi = max(hi, t)
        rows.append({"side": i % 2, "k": r.randrange(5), "t": t, "i": i})
    data = pl.DataFrame(rows)
    flow = sl.Flow("late")
    out = sl.sinks.collect()
    s = flow.source(sl.sources.memory(data, batch_size=1), time="t")
    ls = s.filter(pl.col("side") == 0).select("k", "t", "i")
    rs = s.filter(pl.col("side") == 1).select("k", "t", "i")
    ls.interval_join(rs, on="k", lower=-30, upper=30).sink(out)
    res = flow.run()
    late = data.with_columns(
        late=pl.col("t") <= pl.col("t").cum_max().shift(1).fill_null(-(2**62)) - 1
    )
    assert late.get_column("late").sum() > 20
    assert res.metric("interval_join", "late_dropped") == late.get_column("late").sum()
    ok = late.filter(~pl.col("late"))
    want = sql(
        """SELECT l.k, l.t, l.i, r.t AS t_right, r.i AS i_right FROM l JOIN r
           ON l.k = r.k AND r.t BETWEEN l.t - 30 AND l.t + 30""",
        l=ok.filter(pl.col("side") == 0),
        r=ok.filter(pl.col("side") == 1),
    )
    assert same_rows(out.to_polars(), want)


# -- window TVF and window join ---------------------------------------------------------
def windows_sql(table: str, size: int, slide: int) -> str:
    n = -(-size // slide)
    return f"""
    (SELECT *, ws + {size} AS we FROM (
        SELECT x.*, (t - ((t % {slide}) + {slide}) % {slide}) - g.i * {slide} AS ws
        FROM {table} x, range(0, {n}) g(i)) WHERE ws > t - {size})"""


@pytest.mark.parametrize("parallelism", [1, 4])
@pytest.mark.parametrize("how", ["inner", "full", "left"])
@pytest.mark.parametrize(("size", "slide"), [(100, 100), (100, 30)])
def test_window_join_matches_duckdb(parallelism: int, how: str, size: int, slide: int) -> None:
    left, right = gen_left(200, 8, 11, 1_000), gen_right(200, 8, 12, 1_000)
    spec = sl.windows.tumbling(size) if size == slide else sl.windows.sliding(size, slide)

    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, left, right, bs=7)
        j = ls.assign_windows(spec).window_join(
            rs.assign_windows(spec), left_on="k", right_on="key", how=how
        )
        return j.with_columns(
            pl.col("window_start", "window_end").dt.epoch("ms"), ot=pl.col("__time")
        )

    got = run_collect(build, parallelism=parallelism)
    want = sql(
        f"""SELECT COALESCE(l.k, r.key) AS k, l.a, l.t,
                   COALESCE(l.ws, r.ws) AS window_start, COALESCE(l.we, r.we) AS window_end,
                   r.b, r.a AS a_right, r.t AS t_right, COALESCE(l.we, r.we) - 1 AS ot
            FROM {windows_sql("l0", size, slide)} l {how.upper()} JOIN
                 {windows_sql("r0", size, slide)} r
            ON l.k = r.key AND l.ws = r.ws AND l.we = r.we""",
        l0=left,
        r0=right,
    )
    assert got.columns[:5] == ["k", "a", "t", "window_start", "window_end"]
    assert same_rows(got, want)


@pytest.mark.parametrize("parallelism", [1, 4])
def test_assign_windows_matches_duckdb_hop(parallelism: int) -> None:
    left = gen_left(300, 8, 13, 1_000)
    got = run_collect(
        lambda f: (
            sources(f, left, left)[0]
            .assign_windows(sl.windows.sliding(100, 40))
            .with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
        ),
        parallelism=parallelism,
    )
    want = sql(
        f"SELECT k, a, t, ws AS window_start, we AS window_end FROM {windows_sql('l', 100, 40)}",
        l=left,
    )
    assert same_rows(got, want)


@pytest.mark.parametrize("parallelism", [1, 4])
def test_window_join_of_two_window_aggregations(parallelism: int) -> None:
    left, right = gen_left(300, 6, 21, 3_000), gen_right(300, 6, 22, 3_000)

    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, left, right, bs=10)
        tw = sl.windows.tumbling(500)
        a = ls.key_by("k").window(tw).agg(n=sl.agg.count())
        b = rs.key_by("key").window(tw).agg(s=sl.agg.sum("a"))
        j = a.window_join(b, left_on="k", right_on="key", how="full")
        return j.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))

    got = run_collect(build, parallelism=parallelism)
    want = sql(
        """WITH a AS (SELECT k, t - t % 500 AS ws, count(*) AS n FROM l GROUP BY ALL),
                b AS (SELECT key, t - t % 500 AS ws, sum(a) AS s FROM r GROUP BY ALL)
           SELECT COALESCE(a.k, b.key) AS k, COALESCE(a.ws, b.ws) AS window_start,
                  COALESCE(a.ws, b.ws) + 500 AS window_end, a.n, b.s
           FROM a FULL JOIN b ON a.k = b.key AND a.ws = b.ws""",
        l=left,
        r=right,
    )
    assert same_rows(got.with_columns(pl.col("n").cast(pl.Int64)), want.cast({"n": pl.Int64}))


@pytest.mark.parametrize("parallelism", [1, 4])
def test_window_join_without_keys_matches_on_the_window(parallelism: int) -> None:
    left, right = gen_left(60, 3, 51, 1_000), gen_right(60, 3, 52, 1_000)
    tw = sl.windows.tumbling(250)

    def build(f: sl.Flow) -> sl.Stream:
        ls, rs = sources(f, left, right, bs=7)
        j = ls.assign_windows(tw).window_join(rs.assign_windows(tw), how="right")
        return j.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))

    got = run_collect(build, parallelism=parallelism)
    want = sql(
        f"""SELECT l.k, l.a, l.t, r.ws AS window_start, r.we AS window_end,
                   r.key, r.b, r.a AS a_right, r.t AS t_right
            FROM {windows_sql("l0", 250, 250)} l RIGHT JOIN {windows_sql("r0", 250, 250)} r
            ON l.ws = r.ws AND l.we = r.we""",
        l0=left,
        r0=right,
    )
    assert same_rows(got, want)


def test_window_join_late_rows_are_counted() -> None:
    # one source feeds both sides; a row whose window already fired is late
    rows = [
        {"side": 0, "k": 1, "t": 10},
        {"side": 1, "k": 1, "t": 20},
        {"side": 0, "k": 1, "t": 250},  # watermark 249: window [0, 100) fired
        {"side": 1, "k": 1, "t": 50},  # late: its window [0, 100) is gone
        {"side": 0, "k": 1, "t": 99},  # late too
        {"side": 1, "k": 1, "t": 260},
    ]
    flow = sl.Flow("wlate")
    out = sl.sinks.collect()
    s = flow.source(
        sl.sources.memory(rows, batch_size=1), time="t", watermark=sl.bounded_out_of_orderness(0)
    )
    tw = sl.windows.tumbling(100)
    a = s.filter(pl.col("side") == 0).select("k", "t").assign_windows(tw)
    b = s.filter(pl.col("side") == 1).select("k", "t").assign_windows(tw)
    a.window_join(b, on="k").select("k", "t", "t_right").sink(out)
    res = flow.run()
    assert res.metric("window_join", "late_dropped") == 2
    assert same_rows(
        out.to_polars(), pl.DataFrame({"k": [1, 1], "t": [10, 250], "t_right": [20, 260]})
    )


# -- lookup join ------------------------------------------------------------------------
@pytest.mark.parametrize("parallelism", [1, 4])
@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("as_file", [False, True])
def test_lookup_join_matches_duckdb(tmp_path, parallelism: int, how: str, as_file: bool) -> None:
    table = pl.DataFrame(
        {"id": [0, 1, 1, 2, 5, None], "label": ["z", "a", "b", "c", "e", "n"], "a": [9] * 6},
        schema={"id": pl.Int32, "label": pl.String, "a": pl.Int64},
    )
    src: Any = table
    if as_file:
        src = str(tmp_path / "dim.parquet")
        table.write_parquet(src)
    left = gen_left(200, 8, 31)
    got = run_collect(
        lambda f: sources(f, left, left)[0].lookup_join(src, left_on="k", right_on="id", how=how),
        parallelism=parallelism,
    )
    want = sql(
        f"SELECT l.k, l.a, l.t, d.label, d.a AS a_right FROM l {how.upper()} JOIN d ON l.k = d.id",
        l=left,
        d=table,
    )
    assert got.columns == ["k", "a", "t", "label", "a_right"]
    assert same_rows(got, want)


def test_lookup_join_csv_file(tmp_path) -> None:
    p = tmp_path / "dim.csv"
    p.write_text("code,country\nFR,France\nDE,Germany\n")
    got = run_collect(
        lambda f: f.source([{"c": "DE"}, {"c": "XX"}]).lookup_join(
            str(p), left_on="c", right_on="code", how="left"
        )
    )
    assert got.to_dicts() == [{"c": "DE", "country": "Germany"}, {"c": "XX", "country": None}]


# -- bad input ----------------------------------------------------------------------------
def _two(f: sl.Flow, **kw: Any) -> tuple[sl.Stream, sl.Stream]:
    return (
        f.source([{"k": 1, "t": 1}], time="t", **kw),
        f.source([{"key": "1", "t": 1}], time="t", **kw),
    )


def test_outer_regular_join_is_refused_with_advice() -> None:
    f = sl.Flow("bad")
    a, b = _two(f)
    with pytest.raises(sl.ConfigError, match=r"interval_join.*window_join"):
        a.join(b, left_on="k", right_on="key", how="left")


def test_missing_key_column_names_column_and_side() -> None:
    f = sl.Flow("bad")
    a, b = _two(f)
    a.join(b, on="k").sink(sl.sinks.collect())
    with pytest.raises(sl.ConfigError, match=r"right input has no column 'k'.*\['key', 't'\]"):
        f.run()


def test_incomparable_key_types_name_both_columns() -> None:
    f = sl.Flow("bad")
    a, b = _two(f)
    a.join(b, left_on="k", right_on="key").sink(sl.sinks.collect())
    with pytest.raises(sl.ConfigError, match=r"'k' \(left, Int64\) and 'key' \(right, String\)"):
        f.run()


def test_bad_parameters_are_config_errors(tmp_path) -> None:
    f = sl.Flow("bad")
    a, b = _two(f)
    with pytest.raises(sl.ConfigError, match=r"lower bound.*after upper"):
        a.interval_join(b, left_on="k", right_on="key", lower="5s", upper="1s")
    with pytest.raises(sl.ConfigError, match="how must be one of"):
        a.interval_join(b, left_on="k", right_on="key", how="outer")
    with pytest.raises(sl.ConfigError, match="give the key columns"):
        a.join(b)
    with pytest.raises(sl.ConfigError, match=r"1 key column.*2 on the right"):
        a.join(b, left_on="k", right_on=["key", "t"])
    with pytest.raises(sl.ConfigError, match="not both"):
        a.join(b, on="k", left_on="k", right_on="key")
    with pytest.raises(sl.ConfigError, match="event time"):
        f.source([{"k": 1}]).interval_join(b, left_on="k", right_on="key")
    with pytest.raises(sl.ConfigError, match=r"tumbling.*sliding"):
        a.assign_windows(sl.windows.session("1s"))
    with pytest.raises(sl.ConfigError, match="no column 'nope'"):
        a.lookup_join(pl.DataFrame({"x": [1]}), left_on="k", right_on="nope")
    with pytest.raises(sl.ConfigError, match="does not exist"):
        a.lookup_join(str(tmp_path / "missing.parquet"), on="k")
    with pytest.raises(sl.ConfigError, match="how must be one of"):
        a.lookup_join(pl.DataFrame({"k": [1]}), on="k", how="full")
    with pytest.raises(sl.ConfigError, match="cannot parse"):
        a.join(b, left_on="k", right_on="key", ttl="soon")


def test_window_join_needs_window_columns() -> None:
    f = sl.Flow("bad")
    a, b = _two(f)
    a.window_join(b.assign_windows(sl.windows.tumbling(10)), left_on="k", right_on="key").sink(
        sl.sinks.collect()
    )
    with pytest.raises(sl.ConfigError, match="left input has no column 'window_start'"):
        f.run()


def test_lookup_key_types_that_cannot_be_compared() -> None:
    f = sl.Flow("bad")
    f.source([{"k": 1}]).lookup_join(pl.DataFrame({"k": ["1"]}), on="k").sink(sl.sinks.collect())
    with pytest.raises(
        sl.ConfigError, match=r"'k' \(stream, Int64\) and 'k' \(lookup table, String\)"
    ):
        f.run()
