// The inspection web page (src/cli/inspect_page.html) and the charting library it draws with
// (Debian's libjs-dygraphs, its minified script and style sheet), embedded at build time by
// cmake/embed_files.cmake: served at "/", "/dygraph.min.js" and "/dygraph.min.css".
#pragma once
#include <string_view>

namespace troupe::cli {

extern const std::string_view kInspectPage;
extern const std::string_view kDygraphJs;
extern const std::string_view kDygraphCss;

}  // namespace troupe::cli
