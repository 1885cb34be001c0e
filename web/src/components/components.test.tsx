import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter } from "react-router";
import { Button } from "@/components/Button";
import { EmptyState, ErrorState, QueryView } from "@/components/States";
import { StatusBadge, toneOf } from "@/components/StatusBadge";
import { Table } from "@/components/Table";
import { RequireAuth } from "@/components/RequireAuth";
import { useAuth } from "@/stores/auth";

describe("StatusBadge", () => {
  it("shows the status and colours it by meaning", () => {
    render(<StatusBadge status="running" />);
    expect(screen.getByText("running")).toHaveAttribute("data-status", "running");
    expect(toneOf("running")).toBe("green");
    expect(toneOf("FAILED")).toBe("red");
    expect(toneOf("provisioning")).toBe("blue");
    expect(toneOf("something-new")).toBe("gray");
  });
});

describe("Table", () => {
  it("renders rows, or the empty state when there are none", () => {
    const cols = [{ key: "n", header: "Name", render: (r: { n: string }) => r.n }];
    const { rerender } = render(<Table caption="Things" columns={cols} rows={[{ n: "a" }, { n: "b" }]} rowKey={(r) => r.n} empty={<p>none</p>} />);
    expect(screen.getAllByRole("row")).toHaveLength(3);
    expect(screen.getByRole("columnheader", { name: "Name" })).toBeInTheDocument();
    rerender(<Table caption="Things" columns={cols} rows={[]} rowKey={(r) => r.n} empty={<p>none</p>} />);
    expect(screen.getByText("none")).toBeInTheDocument();
  });
});

describe("states", () => {
  it("ErrorState shows the message and retries", async () => {
    const retry = vi.fn();
    render(<ErrorState error={new Error("Boom happened")} retry={retry} />);
    expect(screen.getByRole("alert")).toHaveTextContent("Boom happened");
    await userEvent.click(screen.getByRole("button", { name: "Try again" }));
    expect(retry).toHaveBeenCalledOnce();
  });
  it("EmptyState says what to do next", () => {
    render(<EmptyState title="No clusters" action={<Button>Deploy</Button>}>Deploy one.</EmptyState>);
    expect(screen.getByText("No clusters")).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Deploy" })).toBeInTheDocument();
  });
  it("QueryView renders loading, error and data", () => {
    const refetch = vi.fn();
    const { rerender } = render(<QueryView query={{ data: undefined, error: null, isPending: true, refetch }}>{(d: string) => d}</QueryView>);
    expect(screen.getByRole("status")).toHaveTextContent("Loading");
    rerender(<QueryView query={{ data: undefined, error: new Error("nope"), isPending: false, refetch }}>{(d: string) => d}</QueryView>);
    expect(screen.getByRole("alert")).toHaveTextContent("nope");
    rerender(<QueryView query={{ data: "hello", error: null, isPending: false, refetch }}>{(d: string) => <p>{d}</p>}</QueryView>);
    expect(screen.getByText("hello")).toBeInTheDocument();
  });
  it("a loading Button is busy and disabled", () => {
    render(<Button loading>Save</Button>);
    const b = screen.getByRole("button", { name: "Save" });
    expect(b).toBeDisabled();
    expect(b).toHaveAttribute("aria-busy", "true");
  });
});

describe("RequireAuth", () => {
  it("explains a missing role instead of showing the page", () => {
    useAuth.setState({ ready: true, user: { id: "u", email: "a@b.c", display_name: "a", roles: ["customer"], is_active: true, created_at: null }, roles: ["customer"] });
    render(
      <MemoryRouter>
        <RequireAuth role="admin">
          <p>secret</p>
        </RequireAuth>
      </MemoryRouter>,
    );
    expect(screen.queryByText("secret")).not.toBeInTheDocument();
    expect(screen.getByRole("alert")).toHaveTextContent("admin");
  });
  it("shows the page for the right role", () => {
    useAuth.setState({ ready: true, user: { id: "u", email: "a@b.c", display_name: "a", roles: ["admin"], is_active: true, created_at: null }, roles: ["admin"] });
    render(
      <MemoryRouter>
        <RequireAuth role="admin">
          <p>secret</p>
        </RequireAuth>
      </MemoryRouter>,
    );
    expect(screen.getByText("secret")).toBeInTheDocument();
  });
});

describe("Table cells", () => {
  it("keep to one line unless the column says how it wraps", () => {
    const cols = [
      { key: "a", header: "A", render: (r: { n: string }) => r.n },
      { key: "d", header: "Details", className: "whitespace-normal", render: (r: { n: string }) => r.n },
    ];
    render(<Table caption="Wrapping" columns={cols} rows={[{ n: "x" }]} rowKey={(r) => r.n} />);
    const [plain, details] = screen.getAllByRole("cell");
    expect(plain.className).toContain("whitespace-nowrap");
    expect(details.className).toContain("whitespace-normal");
    expect(details.className).not.toContain("whitespace-nowrap");
  });
});
