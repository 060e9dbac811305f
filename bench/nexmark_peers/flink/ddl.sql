-- The three Nexmark tables read from CSV files written by bench/nexmark_peers.py.
-- nexmark-flink reads one combined `datagen` table (connector 'nexmark') and splits it with
-- views; the pip apache-flink wheel has no Parquet format and no nexmark connector, so here each
-- stream is its own filesystem/CSV table. Event time and watermark are nexmark-flink's.
-- {dir} is replaced by the data directory.
CREATE TABLE person (
    id  BIGINT,
    name  VARCHAR,
    email_address  VARCHAR,
    credit_card  VARCHAR,
    city  VARCHAR,
    state  VARCHAR,
    date_time  TIMESTAMP(3),
    extra  VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{dir}/person', 'format' = 'csv');

CREATE TABLE auction (
    id  BIGINT,
    item_name  VARCHAR,
    description  VARCHAR,
    initial_bid  BIGINT,
    reserve  BIGINT,
    date_time  TIMESTAMP(3),
    expires  TIMESTAMP(3),
    seller  BIGINT,
    category  BIGINT,
    extra  VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{dir}/auction', 'format' = 'csv');

CREATE TABLE bid (
    auction  BIGINT,
    bidder  BIGINT,
    price  BIGINT,
    channel  VARCHAR,
    url  VARCHAR,
    date_time  TIMESTAMP(3),
    extra  VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{dir}/bid', 'format' = 'csv');
