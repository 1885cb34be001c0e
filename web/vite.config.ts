/// <reference types="vitest/config" />
import { fileURLToPath, URL } from "node:url";
import tailwindcss from "@tailwindcss/vite";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Built into the Python package so the API process serves the console at "/".
export default defineConfig({
  plugins: [react(), tailwindcss()],
  resolve: { alias: { "@": fileURLToPath(new URL("./src", import.meta.url)) } },
  build: {
    outDir: "../src/tesai/console/dist",
    emptyOutDir: true,
    manifest: true,
    chunkSizeWarningLimit: 1200,
    rolldownOptions: {
      output: {
        // Heavy libraries get their own chunks, loaded only by the pages that use them
        // (lazy routes, lazy chart wrappers): the first page load stays small.
        codeSplitting: {
          groups: [
            { name: "react", test: /node_modules[\\/](react|react-dom|scheduler|react-router|cookie|set-cookie-parser)[\\/]/, priority: 30 },
            { name: "query", test: /node_modules[\\/](@tanstack|zustand|openapi-fetch)[\\/]/, priority: 25 },
            // Shared by charts and the wallet adapter: on its own, so neither pulls in the other.
            { name: "events", test: /node_modules[\\/]eventemitter3[\\/]/, priority: 40 },
            { name: "solana", test: /node_modules[\\/](@solana|@wallet-standard|@noble|bn\.js|borsh|bs58|base-x|buffer|superstruct|rpc-websockets|jayson)[\\/]/, priority: 20 },
            { name: "charts", test: /node_modules[\\/](recharts|d3-[a-z-]+|victory-vendor|internmap|decimal\.js-light|@reduxjs|redux|react-redux|immer|reselect|es-toolkit|eventemitter3|tiny-invariant|use-sync-external-store|clsx)[\\/]/, priority: 10 },
          ],
        },
      },
    },
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8000",
      "/graphql": "http://127.0.0.1:8000",
    },
  },
  test: {
    environment: "jsdom",
    globals: true,
    setupFiles: ["./src/test/setup.ts"],
    css: false,
  },
});
