import {
  auditFilterErrors,
  auditSubject,
  buildAuditQuery,
  creditGrant,
  currentCursor,
  EMPTY_AUDIT_FILTERS,
  firstPage,
  nextPage,
  previousPage,
  reportChart,
  toggleRole,
} from "./lib";

const filters = (f: Partial<typeof EMPTY_AUDIT_FILTERS>) => ({ ...EMPTY_AUDIT_FILTERS, ...f });
const ACTOR = "0F8FAD5B-D9CB-469F-A165-70867728950E";

describe("audit filters", () => {
  it("accepts empty filters and well-formed ones", () => {
    expect(auditFilterErrors(EMPTY_AUDIT_FILTERS)).toEqual({});
    expect(auditFilterErrors(filters({ action: " admin.roles_changed ", actor: ACTOR, since: "2026-11-28T10:00" }))).toEqual({});
  });

  it("names each bad field", () => {
    const errors = auditFilterErrors(filters({ action: "drop table;", actor: "bob", since: "yesterday" }));
    expect(Object.keys(errors).sort()).toEqual(["action", "actor", "since"]);
    expect(auditFilterErrors(filters({ action: "a".repeat(65) })).action).toBeDefined();
    expect(auditFilterErrors(filters({ actor: `${ACTOR}0` })).actor).toBeDefined();
  });

  it("builds the query: trimmed action, lower-case actor, since as UTC ISO, cursor", () => {
    expect(buildAuditQuery(EMPTY_AUDIT_FILTERS, null)).toEqual({ limit: 50 });
    expect(buildAuditQuery(filters({ action: "  auth.login ", actor: ` ${ACTOR} `, since: "2026-11-28T10:00" }), 420, 20)).toEqual({
      action: "auth.login",
      actor: ACTOR.toLowerCase(),
      since: "2026-11-28T10:00:00Z",
      before_id: 420,
      limit: 20,
    });
  });

  it("keeps seconds and explicit offsets, and drops an unparseable since", () => {
    expect(buildAuditQuery(filters({ since: "2026-11-28T10:00:30" }), null).since).toBe("2026-11-28T10:00:30Z");
    expect(buildAuditQuery(filters({ since: "2026-11-28T10:00:00+02:00" }), null).since).toBe("2026-11-28T10:00:00+02:00");
    expect(buildAuditQuery(filters({ since: "not a date" }), null)).toEqual({ limit: 50 });
  });

  it("sends before_id 0 (a real cursor), not only truthy ones", () => {
    expect(buildAuditQuery(EMPTY_AUDIT_FILTERS, 0).before_id).toBe(0);
  });
});

describe("keyset pager", () => {
  it("walks older pages and back to the first", () => {
    let p = firstPage();
    expect(currentCursor(p)).toBeNull();
    p = nextPage(p, 90);
    p = nextPage(p, 40);
    expect(currentCursor(p)).toBe(40);
    expect(p.cursors).toEqual([null, 90, 40]);
    p = previousPage(p);
    expect(currentCursor(p)).toBe(90);
    p = previousPage(previousPage(p));
    expect(p.cursors).toEqual([null]);
    expect(currentCursor(p)).toBeNull();
  });

  it("does not mutate the pager it is given", () => {
    const p = firstPage();
    nextPage(p, 5);
    expect(p.cursors).toEqual([null]);
  });
});

describe("toggleRole", () => {
  it("adds and removes roles in a stable order", () => {
    expect(toggleRole(["customer"], "admin", true)).toEqual(["customer", "admin"]);
    expect(toggleRole(["admin", "customer"], "provider", true)).toEqual(["customer", "provider", "admin"]);
    expect(toggleRole(["customer", "provider"], "customer", false)).toEqual(["provider"]);
    expect(toggleRole(["customer"], "customer", true)).toEqual(["customer"]);
  });

  it("never leaves a user without a role", () => {
    expect(toggleRole(["admin"], "admin", false)).toEqual(["admin"]);
    expect(toggleRole(["provider"], "provider", false)).toEqual(["provider"]);
  });

  it("drops names that are not roles", () => {
    expect(toggleRole(["customer", "superuser"], "provider", true)).toEqual(["customer", "provider"]);
  });
});

describe("reportChart", () => {
  it("is null without rows or without numeric series", () => {
    expect(reportChart(["period", "gpus"], [])).toBeNull();
    expect(reportChart(["region", "model"], [{ region: "eu", model: "A100" }])).toBeNull();
  });

  it("charts numeric columns against the period, skipping ids and ranks", () => {
    const chart = reportChart(
      ["device_id", "period", "gpus_online", "rank", "revenue_micro", "region"],
      [
        { device_id: 7, period: "2026-11-28T10:00:00Z", gpus_online: 3, rank: 1, revenue_micro: 5, region: "eu" },
        { device_id: 8, period: "2026-11-28T11:00:00Z", gpus_online: null, rank: 2, revenue_micro: 6, region: "us" },
      ],
    );
    expect(chart).not.toBeNull();
    expect(chart!.xKey).toBe("period");
    expect(chart!.series).toEqual(["gpus_online", "revenue_micro"]);
    expect(chart!.data).toEqual([
      { period: "2026-11-28T10:00:00Z", gpus_online: 3, revenue_micro: 5 },
      { period: "2026-11-28T11:00:00Z", gpus_online: null, revenue_micro: 6 },
    ]);
  });

  it("uses the first column as x without a period, and at most four series", () => {
    const cols = ["provider", "a", "b", "c", "d", "e"];
    const chart = reportChart(cols, [{ provider: "p1", a: 1, b: 2, c: 3, d: 4, e: 5 }]);
    expect(chart!.xKey).toBe("provider");
    expect(chart!.series).toEqual(["a", "b", "c", "d"]);
    expect(chart!.data[0]).toEqual({ provider: "p1", a: 1, b: 2, c: 3, d: 4 });
  });

  it("counts a column as numeric if any row has a number, and keeps non-numbers out", () => {
    const chart = reportChart(["period", "price"], [
      { period: "x", price: "n/a" },
      { period: "y", price: 2.5 },
    ]);
    expect(chart!.series).toEqual(["price"]);
    expect(chart!.data.map((d) => d.price)).toEqual([null, 2.5]);
  });
});

describe("credit grant form", () => {
  it("takes a positive USDC amount and a reason", () => {
    expect(creditGrant("25", "welcome credit")).toEqual({ micro: 25_000_000, errors: {} });
    expect(creditGrant(" $1,000.5 ", " promo ")).toEqual({ micro: 1_000_500_000, errors: {} });
  });

  it("names each field that cannot be sent", () => {
    expect(creditGrant("", "").errors).toEqual({ amount: expect.any(String), reason: expect.any(String) });
    expect(creditGrant("0", "x").errors.amount).toBeDefined();
    expect(creditGrant("1.0000001", "x").errors.amount).toBeDefined();
    expect(creditGrant("ten", "x").micro).toBeNull();
    expect(creditGrant("1", "r".repeat(301)).errors.reason).toBe("At most 300 characters");
  });
});

describe("auditSubject", () => {
  it("keeps a prefixed id's prefix and shortens what follows, never a bare colon", () => {
    expect(auditSubject("hold", "cluster:11111111-2222-3333-4444-555555555555")).toBe("hold cluster:11111111");
    expect(auditSubject("cluster", "11111111-2222-3333-4444-555555555555")).toBe("cluster 11111111");
    expect(auditSubject("user", null)).toBe("user");
    expect(auditSubject(null, null)).toBe("—");
  });
});
