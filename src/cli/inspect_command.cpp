// `troupe inspect [HOST:PORT]`: the live console of a running job (ncurses, refreshed every
// second), or one snapshot with --once (--json: the endpoint's JSON, for scripts).
#include <CLI/CLI.hpp>
#include <curses.h>
#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/inspect_view.h"

namespace troupe::cli {

namespace {

struct InspectOptions {
  std::string address = "127.0.0.1:8470";
  bool once = false, json = false;
  std::string token;
};

class Endpoint {
 public:
  explicit Endpoint(const InspectOptions& o) : address_(o.address) {
    const auto colon = o.address.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("address '" + o.address + "' is not HOST:PORT");
    const int port = std::stoi(o.address.substr(colon + 1));
    client_ = std::make_unique<httplib::Client>(o.address.substr(0, colon), port);
    client_->set_connection_timeout(2);
    client_->set_read_timeout(5);
    const char* env = std::getenv("TROUPE_INSPECT_TOKEN");
    const auto token = !o.token.empty() ? o.token : (env ? env : "");
    if (!token.empty()) client_->set_bearer_token_auth(token);
  }

  nlohmann::json status() { return get("/api/status"); }

  nlohmann::json get(const char* path) {
    auto res = client_->Get(path);
    if (!res) throw std::runtime_error("cannot reach troupe at " + address_ + ": " + httplib::to_string(res.error()));
    if (res->status != 200)
      throw std::runtime_error(address_ + " answered " + std::to_string(res->status) + ": " + res->body);
    return nlohmann::json::parse(res->body);
  }

  // A control; returns what to show the user.
  std::string post(const std::string& path) {
    auto res = client_->Post(path.c_str(), "", "text/plain");
    if (!res) return "failed: " + httplib::to_string(res.error());
    return res->status == 202 ? "sent " + path : "refused (" + std::to_string(res->status) + "): " + res->body;
  }

 private:
  std::string address_;
  std::unique_ptr<httplib::Client> client_;
};

std::string prompt(int row, const std::string& question) {
  echo();
  curs_set(1);
  timeout(-1);
  mvprintw(row, 0, "%s", question.c_str());
  clrtoeol();
  char buf[128] = {0};
  getnstr(buf, sizeof buf - 1);
  noecho();
  curs_set(0);
  timeout(100);
  return buf;
}

// The MoE loads when the job has newer ones than the view.
void update_moe(Endpoint& endpoint, InspectView& view, const nlohmann::json& status) {
  const auto step = status.at("job").value("moe_step", int64_t{0});
  if (step > 0 && step != view.moe_step()) view.update_moe(endpoint.get("/api/moe"));
}

int console(Endpoint& endpoint) {
  InspectView view;
  std::string message, error;
  size_t selected = 0;
  std::optional<std::string> opened;  // the actor whose details are shown
  initscr();
  cbreak();
  noecho();
  keypad(stdscr, TRUE);
  curs_set(0);
  timeout(100);
  auto last = std::chrono::steady_clock::time_point{};
  bool quit = false;
  while (!quit) {
    if (std::chrono::steady_clock::now() - last >= std::chrono::seconds(1)) {
      last = std::chrono::steady_clock::now();
      try {
        const auto status = endpoint.status();
        view.update(status);
        update_moe(endpoint, view, status);
        error.clear();
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    std::vector<std::string> names;
    const auto rows = view.rows(&names);
    if (!rows.empty()) selected = std::min(selected, rows.size() - 1);
    erase();
    mvprintw(0, 0, "%s", view.job_line().c_str());
    mvprintw(1, 0, "q quit  p pause  r resume  c checkpoint now  l log_freq  s sort (%s)  / filter (%s)  Enter details",
             view.sort_column().c_str(), view.filter().empty() ? "none" : view.filter().c_str());
    if (opened) {
      mvprintw(3, 0, "%s  (Enter or Esc: back)", opened->c_str());
      int y = 4;
      for (const auto& line : view.detail(*opened))
        if (y < LINES - 1) mvprintw(y++, 0, "%s", line.c_str());
    } else {
      attron(A_BOLD);
      mvprintw(3, 0, "%s", view.header().c_str());
      attroff(A_BOLD);
      for (size_t i = 0; i < rows.size() && static_cast<int>(i) + 4 < LINES - 1; ++i) {
        if (i == selected) attron(A_REVERSE);
        mvprintw(static_cast<int>(i) + 4, 0, "%s", rows[i].c_str());
        if (i == selected) attroff(A_REVERSE);
      }
    }
    mvprintw(LINES - 1, 0, "%s", (error.empty() ? message : error).c_str());
    refresh();
    const int key = getch();
    switch (key) {
      case 'q': quit = true; break;
      case 'p': message = endpoint.post("/api/pause"); break;
      case 'r': message = endpoint.post("/api/resume"); break;
      case 'c': message = endpoint.post("/api/checkpoint"); break;
      case 'l': {
        const auto n = prompt(LINES - 1, "log_freq: ");
        if (!n.empty()) message = endpoint.post("/api/log_freq?value=" + n);
        break;
      }
      case 's': view.next_sort(); break;
      case '/': view.set_filter(prompt(LINES - 1, "filter (name or state, empty: none): ")); break;
      case KEY_UP: if (selected > 0) --selected; break;
      case KEY_DOWN: ++selected; break;
      case '\n': case KEY_ENTER:
        if (opened) opened.reset();
        else if (selected < names.size()) opened = names[selected];
        break;
      case 27: opened.reset(); break;
      default: break;
    }
  }
  endwin();
  return 0;
}

int run_inspect(const InspectOptions& o) {
  try {
    Endpoint endpoint(o);
    if (!o.once) return console(endpoint);
    const auto status = endpoint.status();
    if (o.json) {
      std::cout << status.dump(2) << std::endl;
      return 0;
    }
    InspectView view;
    view.update(status);
    std::cout << view.job_line() << '\n' << view.header() << '\n';
    for (const auto& row : view.rows()) std::cout << row << '\n';
    update_moe(endpoint, view, status);
    for (const auto& line : view.moe_heat_map()) std::cout << line << '\n';
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "troupe inspect: " << e.what() << '\n';
    return 1;
  }
}

}  // namespace

Action add_inspect_command(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Live console of a running job (every actor of every node)");
  cmd->add_option("address", opts->address, "HOST:PORT of the job's inspection endpoint (node 0's for the whole job)")
      ->capture_default_str();
  cmd->add_flag("--once", opts->once, "print one snapshot and exit");
  cmd->add_flag("--json", opts->json, "with --once: the endpoint's JSON");
  cmd->add_option("--token", opts->token, "the job's inspect.token (or TROUPE_INSPECT_TOKEN)");
  return [cmd, opts]() -> int {
    if (!cmd->parsed()) return -1;
    return run_inspect(*opts);
  };
}

}  // namespace troupe::cli
