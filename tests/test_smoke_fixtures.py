import redis
import sqlalchemy as sa


def test_redis_and_postgres_are_real(redis_urls, postgres_url):
    broker, _ = redis_urls
    client = redis.Redis.from_url(broker)
    client.set("k", "v")
    assert client.get("k") == b"v"
    with sa.create_engine(postgres_url).connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
