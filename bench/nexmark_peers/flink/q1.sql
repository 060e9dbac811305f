-- nexmark/nexmark nexmark-flink/src/main/resources/queries/q1.sql (Apache-2.0, commit 6b3646c),
-- unchanged except columns in snake_case (dateTime -> date_time, itemName -> item_name, ...).
CREATE TABLE nexmark_q1 (
  auction  BIGINT,
  bidder  BIGINT,
  price  DECIMAL(23, 3),
  date_time  TIMESTAMP(3),
  extra  VARCHAR
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q1
SELECT
    auction,
    bidder,
    0.908 * price as price, -- convert dollar to euro
    date_time,
    extra
FROM bid;
