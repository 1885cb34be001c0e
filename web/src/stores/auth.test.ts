import { useAuth, type InjectedWallet } from "@/stores/auth";

type Handler = (url: string, init: RequestInit) => { status: number; body?: unknown };

function mockFetch(handler: Handler) {
  const calls: { url: string; init: RequestInit }[] = [];
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string, init: RequestInit = {}) => {
      calls.push({ url, init });
      const { status, body } = handler(url, init);
      return new Response(body === undefined ? null : JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
    }),
  );
  return calls;
}

const user = { id: "u1", email: "a@example.com", display_name: "a", roles: ["customer"], is_active: true, created_at: null };
const tokens = (n: number) => ({ access_token: `access${n}`, refresh_token: `refresh${n}`, expires_in: 900, token_type: "bearer" });

beforeEach(() => {
  localStorage.clear();
  useAuth.setState({ user: null, roles: [], accessToken: null, refreshToken: null, ready: false });
});
afterEach(() => vi.unstubAllGlobals());

describe("auth store", () => {
  it("logs in, loads the user and persists only the tokens", async () => {
    const calls = mockFetch((url) => (url.endsWith("/login") ? { status: 200, body: tokens(1) } : { status: 200, body: user }));
    await useAuth.getState().login("a@example.com", "correct horse battery");
    const s = useAuth.getState();
    expect(s.user?.email).toBe("a@example.com");
    expect(s.roles).toEqual(["customer"]);
    expect(s.hasRole("customer")).toBe(true);
    expect(s.hasRole("admin")).toBe(false);
    expect(new Headers(calls[1].init.headers).get("Authorization")).toBe("Bearer access1");
    const stored = JSON.parse(localStorage.getItem("tesai-auth")!);
    expect(stored.state).toEqual({ accessToken: "access1", refreshToken: "refresh1" });
  });

  it("surfaces the API's problem detail on a failed login", async () => {
    mockFetch(() => ({ status: 401, body: { title: "Unauthorized", detail: "Wrong email or password", status: 401 } }));
    await expect(useAuth.getState().login("a@example.com", "nope")).rejects.toThrow("Wrong email or password");
    expect(useAuth.getState().accessToken).toBeNull();
  });

  it("refreshes an expired access token once for concurrent callers", async () => {
    useAuth.setState({ accessToken: "old", refreshToken: "refresh0" });
    const calls = mockFetch((url) => (url.endsWith("/refresh") ? { status: 200, body: tokens(2) } : { status: 500 }));
    const [a, b] = await Promise.all([useAuth.getState().refresh(), useAuth.getState().refresh()]);
    expect(a && b).toBe(true);
    expect(calls.filter((c) => c.url.endsWith("/refresh"))).toHaveLength(1);
    expect(useAuth.getState().accessToken).toBe("access2");
  });

  it("signs out when the refresh token is rejected", async () => {
    useAuth.setState({ accessToken: "old", refreshToken: "stale", user });
    mockFetch(() => ({ status: 401, body: { detail: "expired" } }));
    expect(await useAuth.getState().refresh()).toBe(false);
    expect(useAuth.getState().user).toBeNull();
    expect(useAuth.getState().refreshToken).toBeNull();
  });

  it("loadUser retries /me after refreshing on 401", async () => {
    useAuth.setState({ accessToken: "old", refreshToken: "refresh0" });
    mockFetch((url, init) => {
      if (url.endsWith("/refresh")) return { status: 200, body: tokens(3) };
      const auth = new Headers(init.headers).get("Authorization");
      return auth === "Bearer access3" ? { status: 200, body: user } : { status: 401, body: { detail: "expired" } };
    });
    await useAuth.getState().loadUser();
    expect(useAuth.getState().user?.id).toBe("u1");
    expect(useAuth.getState().ready).toBe(true);
  });

  it("signs in with a wallet: nonce, signature in base58, verify", async () => {
    const signature = new Uint8Array(64).fill(7);
    const wallet: InjectedWallet = {
      connect: vi.fn(async () => ({ publicKey: { toString: () => "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin" } })),
      signMessage: vi.fn(async () => ({ signature })),
    };
    const calls = mockFetch((url) => {
      if (url.endsWith("/wallet/nonce")) return { status: 200, body: { nonce: "n", message: "sign this", expires_at: "x" } };
      if (url.endsWith("/wallet/verify")) return { status: 200, body: tokens(4) };
      return { status: 200, body: user };
    });
    await useAuth.getState().walletLogin(wallet);
    expect(wallet.signMessage).toHaveBeenCalledWith(new TextEncoder().encode("sign this"), "utf8");
    const verify = JSON.parse(String(calls.find((c) => c.url.endsWith("/verify"))!.init.body));
    expect(verify.message).toBe("sign this");
    const { default: bs58 } = await import("bs58");
    expect(bs58.decode(verify.signature)).toEqual(signature);
    expect(useAuth.getState().accessToken).toBe("access4");
  });

  it("logs out locally even if the server call fails", async () => {
    useAuth.setState({ accessToken: "a", refreshToken: "r", user, roles: ["customer"] });
    mockFetch(() => ({ status: 500 }));
    await useAuth.getState().logout();
    expect(useAuth.getState()).toMatchObject({ user: null, accessToken: null, refreshToken: null, roles: [] });
  });
});
