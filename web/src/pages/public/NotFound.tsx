import { ButtonLink } from "@/components/Button";
import { EmptyState } from "@/components/States";

export function NotFound() {
  return (
    <EmptyState title="Page not found" action={<ButtonLink to="/">Go to the start page</ButtonLink>}>
      The address may be mistyped, or the page has moved.
    </EmptyState>
  );
}
