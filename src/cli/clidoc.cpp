// husk-clidoc: writes husk's bash completion from the command line husk
// itself parses (cli/app.cpp), so the two cannot drift. Build time only;
// meson runs it and installs what it prints.
//   husk-clidoc bash
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "cli/app.h"

namespace {

struct Level {
    std::string flags;   // options that take no value
    std::string valued;  // options that take one
    std::string subs;    // its subcommands
};

void add(std::string& list, const std::string& word) { list += (list.empty() ? "" : " ") + word; }

// The choices CLI::IsMember gives an option ("{text,json}"), as words.
std::string choices(CLI::Option& o) {
    try {
        std::string d = o.get_validator()->get_description();
        if (d.size() < 2 || d.front() != '{' || d.back() != '}') return "";
        d = d.substr(1, d.size() - 2);
        for (auto& c : d)
            if (c == ',') c = ' ';
        return d;
    } catch (const CLI::OptionNotFound&) {
        return "";
    }
}

void walk(CLI::App& app, const std::string& path, std::map<std::string, Level>& levels,
          std::map<std::string, std::string>& values, std::string& id_commands) {
    Level& l = levels[path];
    for (auto* o : app.get_options()) {
        if (!o->nonpositional()) continue;
        for (const auto& n : husk::cli::option_flags(*o)) {
            add(o->get_items_expected_max() > 0 ? l.valued : l.flags, n);
            if (auto c = choices(*o); !c.empty()) values[path + "|" + n] = c;
        }
    }
    for (auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        add(l.subs, sub->get_name());
        std::string p = path + " " + sub->get_name();
        if (path == "husk" && husk::cli::takes_existing_id(*sub)) add(id_commands, sub->get_name());
        walk(*sub, p, levels, values, id_commands);
    }
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2 || std::string(argv[1]) != "bash") {
        std::cerr << "usage: husk-clidoc bash\n";
        return 2;
    }
    husk::cli::AppState s;
    CLI::App app;
    husk::cli::build_app(app, s);
    std::map<std::string, Level> levels;
    std::map<std::string, std::string> values;
    std::string id_commands;
    walk(app, "husk", levels, values, id_commands);

    std::cout << "# bash completion for husk(8). Written by husk-clidoc from the command line\n"
                 "# husk parses (src/cli/app.cpp): do not edit, it is made at build time.\n"
                 "# Levels are keyed by their command path (\"husk\", \"husk templates rm\").\n"
                 "declare -gA _husk_flags _husk_valued _husk_subs _husk_values\n"
                 "_husk_flags=(";
    for (auto& [p, l] : levels) std::cout << " [" << quoted(p) << "]=" << quoted(l.flags);
    std::cout << " )\n_husk_valued=(";
    for (auto& [p, l] : levels) std::cout << " [" << quoted(p) << "]=" << quoted(l.valued);
    std::cout << " )\n_husk_subs=(";
    for (auto& [p, l] : levels) std::cout << " [" << quoted(p) << "]=" << quoted(l.subs);
    std::cout << " )\n_husk_values=(";
    for (auto& [k, v] : values) std::cout << " [" << quoted(k) << "]=" << quoted(v);
    std::cout << " )\n_husk_id_commands=" << quoted(" " + id_commands + " ") << "\n";
    std::cout << R"BASH(
# The ids of the containers under the --root the command line names.
_husk_ids() {
    local root=() i
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
        --root) root=(--root "${words[i + 1]}") ;;
        --root=*) root=("${words[i]}") ;;
        esac
    done
    "${words[0]}" "${root[@]}" list -q 2>/dev/null
}

_husk() {
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
        cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    fi
    local path=husk npos=0 i w
    # What is before the cursor: the subcommand path and how many
    # positional words it already has.
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        if [[ " ${_husk_valued[$path]} ${_husk_valued[husk]} " == *" $w "* ]]; then
            ((i++))
        elif [[ $w == -* ]]; then
            :
        elif ((npos == 0)) && [[ " ${_husk_subs[$path]} " == *" $w "* ]]; then
            path+=" $w"
        else
            ((npos++))
        fi
    done
    # exec takes the rest of the line as the container's command.
    if [[ $path == "husk exec" ]] && ((npos > 0)); then
        COMPREPLY=($(compgen -c -- "$cur"))
        return
    fi
    if [[ " ${_husk_valued[$path]} ${_husk_valued[husk]} " == *" $prev "* ]]; then
        local v=${_husk_values["$path|$prev"]:-${_husk_values["husk|$prev"]}}
        if [[ -n $v ]]; then
            COMPREPLY=($(compgen -W "$v" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_husk_flags[$path]} ${_husk_valued[$path]}" -- "$cur"))
        return
    fi
    local cmd=${path#husk}
    cmd=${cmd# }
    cmd=${cmd%% *}
    if [[ $path == husk ]] || { [[ -n ${_husk_subs[$path]} ]] && ((npos == 0)); }; then
        COMPREPLY=($(compgen -W "${_husk_subs[$path]}" -- "$cur"))
    elif [[ $_husk_id_commands == *" $cmd "* ]] && ((npos == 0)); then
        COMPREPLY=($(compgen -W "$(_husk_ids)" -- "$cur"))
    elif [[ $path == "husk kill" ]] && ((npos == 1)); then
        COMPREPLY=($(compgen -W "$(kill -l | tr -s '[:space:]' '\n' | sed -n 's/^SIG//p')" -- "${cur#SIG}"))
    fi
}
complete -F _husk husk
)BASH";
    return 0;
}
