// Allure 3 configuration for imageready (used by scripts/report.sh; `make report`).
// One self-contained HTML file (awesome plugin, singleFile), built offline from the results
// that `pytest --vm ...` wrote to <report-dir>/allure-results.
import { readFileSync } from "node:fs";
import { defineConfig } from "allure";

// The same categories the run writes into allure-results/categories.json (Allure 2 reads that
// file; Allure 3 takes them from its configuration).
const categories = JSON.parse(readFileSync(new URL("./categories.json", import.meta.url), "utf-8"));

export default defineConfig({
  name: "imageready",
  output: "./out/allure-report",
  categories,
  plugins: {
    awesome: {
      options: {
        singleFile: true,
        reportName: "imageready",
        // engineers look for one VM first, then checks or actions, then a check's title
        groupBy: ["vm", "feature", "story"],
        reportLanguage: "en",
      },
    },
  },
});
