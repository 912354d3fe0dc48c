"""SQLAlchemy's inspector and pandas.read_sql over the PostgreSQL dialect."""
import pandas as pd
import sqlalchemy as sa


def test_inspector_lists_schemas_tables_columns_views(server):
    engine = sa.create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA crm")
        conn.exec_driver_sql("CREATE TABLE crm.members (id bigint NOT NULL, phone text, points numeric(10,2))")
        conn.exec_driver_sql("INSERT INTO crm.members VALUES (1, '+8613800000001', 1.5), (2, NULL, 2)")
        conn.exec_driver_sql("CREATE VIEW crm.phones AS SELECT phone FROM crm.members")
    insp = sa.inspect(engine)
    assert "crm" in insp.get_schema_names()
    assert insp.get_table_names(schema="crm") == ["members"]
    assert insp.get_view_names(schema="crm") == ["phones"]
    cols = {c["name"]: c for c in insp.get_columns("members", schema="crm")}
    assert list(cols) == ["id", "phone", "points"]
    assert cols["id"]["nullable"] is False
    assert isinstance(cols["id"]["type"], sa.BigInteger)
    assert isinstance(cols["points"]["type"], sa.Numeric)
    df = pd.read_sql("SELECT id, phone, points FROM crm.members ORDER BY id", engine)
    assert list(df["id"]) == [1, 2]
    assert df["phone"].isna().tolist() == [False, True]
    engine.dispose()
