/** Who is signed in: tokens (kept in localStorage), the user and their roles. */
import { create } from "zustand";
import { createJSONStorage, persist } from "zustand/middleware";
import type { components } from "@/api/schema";

export type User = components["schemas"]["UserOut"];
export type Tokens = components["schemas"]["TokenResponse"];
export type Role = "customer" | "provider" | "admin";

/** An injected Solana wallet (Phantom, Backpack, Solflare, … expose this shape as `window.solana`). */
export interface InjectedWallet {
  publicKey?: { toString(): string } | null;
  connect(): Promise<{ publicKey: { toString(): string } } | void>;
  signMessage(message: Uint8Array, encoding?: string): Promise<{ signature: Uint8Array } | Uint8Array>;
}

interface AuthState {
  user: User | null;
  roles: Role[];
  accessToken: string | null;
  refreshToken: string | null;
  /** The stored session has been checked against /auth/me (or there was none). */
  ready: boolean;
  setTokens(tokens: Tokens): void;
  login(email: string, password: string): Promise<void>;
  signup(email: string, password: string, roles: Role[]): Promise<void>;
  walletLogin(wallet: InjectedWallet): Promise<void>;
  loadUser(): Promise<void>;
  refresh(): Promise<boolean>;
  logout(): Promise<void>;
  hasRole(role: Role): boolean;
}

export class AuthError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "AuthError";
    this.status = status;
  }
}

async function post<T>(path: string, body: unknown, token?: string | null): Promise<T> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) throw new AuthError(response.status, await errorText(response));
  return (response.status === 204 ? undefined : await response.json()) as T;
}

async function errorText(response: Response): Promise<string> {
  try {
    const problem = await response.json();
    if (typeof problem.detail === "string") return problem.detail;
    if (Array.isArray(problem.detail)) return problem.detail.map((d: { msg?: string }) => d.msg).join("; ");
    if (Array.isArray(problem.errors)) return problem.errors.map((d: { msg?: string }) => d.msg).join("; ");
    return problem.title ?? `Request failed (${response.status})`;
  } catch {
    return `Request failed (${response.status})`;
  }
}

let refreshing: Promise<boolean> | null = null;

export const useAuth = create<AuthState>()(
  persist(
    (set, get) => ({
      user: null,
      roles: [],
      accessToken: null,
      refreshToken: null,
      ready: false,

      setTokens(tokens) {
        set({ accessToken: tokens.access_token, refreshToken: tokens.refresh_token });
      },

      async login(email, password) {
        get().setTokens(await post<Tokens>("/api/v1/auth/login", { email, password }));
        await get().loadUser();
      },

      async signup(email, password, roles) {
        await post<User>("/api/v1/auth/signup", { email, password, roles });
        await get().login(email, password);
      },

      async walletLogin(wallet) {
        const connected = await wallet.connect();
        const key = (connected && connected.publicKey) || wallet.publicKey;
        if (!key) throw new AuthError(0, "The wallet did not share its address");
        const address = key.toString();
        const { message } = await post<{ message: string }>("/api/v1/auth/wallet/nonce", { address });
        const signed = await wallet.signMessage(new TextEncoder().encode(message), "utf8");
        const signature = signed instanceof Uint8Array ? signed : signed.signature;
        const { default: bs58 } = await import("bs58");
        const tokens = await post<Tokens>("/api/v1/auth/wallet/verify", {
          message,
          signature: bs58.encode(signature),
        });
        get().setTokens(tokens);
        await get().loadUser();
      },

      async loadUser() {
        const token = get().accessToken;
        if (!token) {
          set({ user: null, roles: [], ready: true });
          return;
        }
        let response = await fetch("/api/v1/auth/me", { headers: { Authorization: `Bearer ${token}` } });
        if (response.status === 401 && (await get().refresh())) {
          response = await fetch("/api/v1/auth/me", {
            headers: { Authorization: `Bearer ${get().accessToken}` },
          });
        }
        if (!response.ok) {
          set({ user: null, roles: [], accessToken: null, refreshToken: null, ready: true });
          if (response.status !== 401) throw new AuthError(response.status, await errorText(response));
          return;
        }
        const user = (await response.json()) as User;
        set({ user, roles: user.roles as Role[], ready: true });
      },

      refresh() {
        // Concurrent 401s share one refresh: refresh tokens are single-use.
        refreshing ??= (async () => {
          const refreshToken = get().refreshToken;
          if (!refreshToken) return false;
          try {
            get().setTokens(await post<Tokens>("/api/v1/auth/refresh", { refresh_token: refreshToken }));
            return true;
          } catch {
            set({ user: null, roles: [], accessToken: null, refreshToken: null });
            return false;
          }
        })().finally(() => {
          refreshing = null;
        });
        return refreshing;
      },

      async logout() {
        const { refreshToken, accessToken } = get();
        set({ user: null, roles: [], accessToken: null, refreshToken: null, ready: true });
        try {
          await post("/api/v1/auth/logout", refreshToken ? { refresh_token: refreshToken } : {}, accessToken);
        } catch {
          // Signed out locally either way; the server session expires on its own.
        }
      },

      hasRole(role) {
        return get().roles.includes(role);
      },
    }),
    {
      name: "tesai-auth",
      storage: createJSONStorage(() => localStorage),
      partialize: (s) => ({ accessToken: s.accessToken, refreshToken: s.refreshToken }),
    },
  ),
);
