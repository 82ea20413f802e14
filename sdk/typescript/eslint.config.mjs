// ESLint's recommended rules, and typescript-eslint's type-checked ones
// for the sources; eslint-plugin-import holds the sources to no import
// cycles (its TypeScript resolver follows `./x.js` to `./x.ts`).
import js from "@eslint/js";
import importPlugin from "eslint-plugin-import";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "docs/", "node_modules/", "src/generated/"] },
  js.configs.recommended,
  {
    files: ["src/**/*.ts"],
    extends: [tseslint.configs.strictTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { import: importPlugin },
    settings: {
      "import/parsers": { "@typescript-eslint/parser": [".ts"] },
      "import/resolver": { typescript: { project: `${import.meta.dirname}/tsconfig.json` } },
    },
    rules: {
      // Template literals of numbers are how messages are written here.
      "@typescript-eslint/restrict-template-expressions": ["error", { allowNumber: true }],
      // A cycle of modules has one of them evaluated before its imports
      // are: keep the dependencies one way (shared types in a module of
      // their own). The rule skips type-only imports.
      "import/no-cycle": "error",
    },
  },
  {
    files: ["**/*.mjs"],
    languageOptions: {
      globals: { console: "readonly", process: "readonly", Buffer: "readonly", URL: "readonly", AbortController: "readonly", AbortSignal: "readonly", setTimeout: "readonly", TextEncoder: "readonly", performance: "readonly" },
    },
  },
);
