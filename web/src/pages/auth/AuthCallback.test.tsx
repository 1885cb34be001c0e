import { render, screen, waitFor } from "@testing-library/react";
import { createMemoryRouter, RouterProvider } from "react-router";
import { useAuth } from "@/stores/auth";
import AuthCallback from "./AuthCallback";

const user = { id: "u1", email: "oidc@example.com", display_name: "oidc", roles: ["provider"], is_active: true, created_at: null };

function renderAt(hash: string) {
  window.history.replaceState(null, "", `/auth/callback${hash}`);
  const router = createMemoryRouter(
    [
      { path: "/auth/callback", element: <AuthCallback /> },
      { path: "/provider", element: <p>provider area</p> },
      { path: "/app/clusters", element: <p>clusters page</p> },
      { path: "/login", element: <p>login page</p> },
    ],
    { initialEntries: ["/auth/callback"] },
  );
  render(<RouterProvider router={router} />);
  return router;
}

beforeEach(() => {
  localStorage.clear();
  useAuth.setState({ user: null, roles: [], accessToken: null, refreshToken: null, ready: true });
});
afterEach(() => vi.unstubAllGlobals());

describe("AuthCallback", () => {
  it("keeps the tokens, loads the user, clears the fragment and goes to the user's area", async () => {
    const fetchMock = vi.fn(async () => new Response(JSON.stringify(user), { status: 200 }));
    vi.stubGlobal("fetch", fetchMock);
    const router = renderAt("#access_token=acc1&refresh_token=ref1&expires_in=900&next=%2F");
    await waitFor(() => expect(router.state.location.pathname).toBe("/provider"));
    expect(screen.getByText("provider area")).toBeInTheDocument();
    expect(window.location.hash).toBe("");
    const s = useAuth.getState();
    expect([s.accessToken, s.refreshToken, s.user?.email]).toEqual(["acc1", "ref1", "oidc@example.com"]);
    expect(JSON.parse(localStorage.getItem("tesai-auth")!).state).toEqual({ accessToken: "acc1", refreshToken: "ref1" });
    expect(new Headers((fetchMock.mock.calls[0] as unknown as [string, RequestInit])[1].headers).get("Authorization")).toBe("Bearer acc1");
  });

  it("goes back to the page the sign-in started from", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => new Response(JSON.stringify(user), { status: 200 })));
    const router = renderAt("#access_token=a&refresh_token=r&next=%2Fapp%2Fclusters");
    await waitFor(() => expect(router.state.location.pathname).toBe("/app/clusters"));
  });

  it("says so when the link has no tokens, and stores nothing", async () => {
    const fetchMock = vi.fn();
    vi.stubGlobal("fetch", fetchMock);
    renderAt("");
    expect(await screen.findByRole("alert")).toHaveTextContent("no tokens");
    expect(screen.getByRole("link", { name: "Back to sign in" })).toHaveAttribute("href", "/login");
    expect(useAuth.getState().accessToken).toBeNull();
    expect(fetchMock).not.toHaveBeenCalled();
  });

  it("reports a token the API refuses", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => new Response(JSON.stringify({ detail: "nope" }), { status: 401 })));
    renderAt("#access_token=bad&refresh_token=bad");
    expect(await screen.findByRole("alert")).toHaveTextContent("not accepted");
    expect(useAuth.getState().accessToken).toBeNull();
  });
});
