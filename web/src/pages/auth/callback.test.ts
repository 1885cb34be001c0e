import { oidcLoginHref, readCallbackFragment } from "./callback";

describe("readCallbackFragment", () => {
  it("reads both tokens, the lifetime and where to go", () => {
    const r = readCallbackFragment("#access_token=a.b.c&refresh_token=r%2B1&expires_in=900&next=%2Fapp%2Fbilling%3Ftab%3D1");
    expect(r).toEqual({
      tokens: { access_token: "a.b.c", refresh_token: "r+1", expires_in: 900, token_type: "bearer" },
      next: "/app/billing?tab=1",
    });
  });

  it("is null without both tokens", () => {
    expect(readCallbackFragment("")).toBeNull();
    expect(readCallbackFragment("#access_token=a")).toBeNull();
    expect(readCallbackFragment("#refresh_token=r&next=/app")).toBeNull();
  });

  it("ignores a next that would leave the site", () => {
    for (const next of ["https://evil.example", "//evil", "/\\evil", "app"]) {
      expect(readCallbackFragment(`#access_token=a&refresh_token=r&next=${encodeURIComponent(next)}`)?.next).toBeNull();
    }
  });
});

describe("oidcLoginHref", () => {
  it("asks the API to come back to the console, to the page the user wanted", () => {
    expect(oidcLoginHref("google", "/app/billing?x=1")).toBe("/api/v1/auth/oidc/google/login?return_to=%2Fapp%2Fbilling%3Fx%3D1");
    expect(oidcLoginHref("my idp", null)).toBe("/api/v1/auth/oidc/my%20idp/login?return_to=%2F");
    expect(oidcLoginHref("google", "//evil")).toBe("/api/v1/auth/oidc/google/login?return_to=%2F");
  });
});
