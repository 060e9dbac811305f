-- nexmark/nexmark nexmark-flink/src/main/resources/queries/q0.sql (Apache-2.0, commit 6b3646c),
-- unchanged except columns in snake_case (dateTime -> date_time, itemName -> item_name, ...).
CREATE TABLE nexmark_q0 (
  auction  BIGINT,
  bidder  BIGINT,
  price  BIGINT,
  date_time  TIMESTAMP(3),
  extra  VARCHAR
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q0
SELECT auction, bidder, price, date_time, extra FROM bid;
