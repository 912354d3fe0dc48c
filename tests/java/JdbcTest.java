import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

/** pgjdbc (Debian's libpostgresql-jdbc-java) against a running touchlake server. */
public class JdbcTest {
    static int passed = 0, failed = 0;

    static void check(String name, boolean ok, String detail) {
        if (ok) { passed++; System.out.println("ok   " + name); }
        else { failed++; System.out.println("FAIL " + name + ": " + detail); }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        try (Connection c = DriverManager.getConnection(url, "touchlake", "")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE SCHEMA crm");
                s.execute("CREATE TABLE crm.members (id bigint NOT NULL, phone text, points numeric(10,2), joined date)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO crm.members VALUES (?, ?, ?, ?)")) {
                p.setLong(1, 1); p.setString(2, "+8613800000001"); p.setBigDecimal(3, new BigDecimal("12.50"));
                p.setDate(4, java.sql.Date.valueOf("2026-01-02"));
                p.executeUpdate();
                p.setLong(1, 2); p.setNull(2, Types.VARCHAR); p.setBigDecimal(3, new BigDecimal("1.00"));
                p.setNull(4, Types.DATE);
                p.executeUpdate();
            }
            try (PreparedStatement p = c.prepareStatement("SELECT id, phone, points, joined FROM crm.members WHERE id = ?")) {
                p.setLong(1, 1);
                try (ResultSet r = p.executeQuery()) {
                    check("prepared select returns the row", r.next(), "no row");
                    check("bigint", r.getLong(1) == 1, "" + r.getLong(1));
                    check("text", "+8613800000001".equals(r.getString(2)), r.getString(2));
                    check("numeric", new BigDecimal("12.50").compareTo(r.getBigDecimal(3)) == 0, "" + r.getBigDecimal(3));
                    check("date", java.sql.Date.valueOf("2026-01-02").equals(r.getDate(4)), "" + r.getDate(4));
                }
            }
            DatabaseMetaData md = c.getMetaData();
            check("product name", md.getDatabaseProductName().equals("PostgreSQL"), md.getDatabaseProductName());
            List<String> tables = new ArrayList<>();
            try (ResultSet r = md.getTables(null, "crm", "%", new String[] {"TABLE"})) {
                while (r.next()) tables.add(r.getString("TABLE_NAME"));
            }
            check("getTables lists crm.members", tables.equals(List.of("members")), tables.toString());
            List<String> cols = new ArrayList<>();
            boolean idNotNull = false;
            try (ResultSet r = md.getColumns(null, "crm", "members", "%")) {
                while (r.next()) {
                    cols.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
                    if (r.getString("COLUMN_NAME").equals("id")) idNotNull = r.getInt("NULLABLE") == DatabaseMetaData.columnNoNulls;
                }
            }
            check("getColumns names and types", cols.equals(List.of("id:int8", "phone:text", "points:numeric", "joined:date")), cols.toString());
            check("getColumns nullability", idNotNull, "id reported nullable");
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT * FROM nope");
                check("missing table raises", false, "no error");
            } catch (SQLException e) {
                check("missing table is 42P01", "42P01".equals(e.getSQLState()), e.getSQLState());
            }
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
