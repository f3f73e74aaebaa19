"""Playbook checks: the `needs` between tasks (unknown names, cycles) and the results they read."""

from __future__ import annotations

from easytask.errors import SourceLocation
from easytask.playbook.model import Task
from easytask.playbook.values import ValueChecker, suggest

__all__ = ["DependencyChecker"]


class DependencyChecker:
    """`needs`: unknown targets, cycles, and results.<task> used without needing the task."""

    def __init__(self, checker: ValueChecker, tasks: list[Task]) -> None:
        self.checker = checker
        self.tasks = {t.name: t for t in tasks}
        self.order = [t.name for t in tasks]

    def check(self) -> None:
        known = True
        for task in self.tasks.values():
            for index, need in enumerate(task.needs):
                if need not in self.tasks:
                    self.checker.fail(
                        f"task {task.name!r} needs unknown task {need!r}{suggest(need, self.order)}",
                        self._need_at(task, index),
                    )
                    known = False
        if not known:
            return
        cycle = self.find_cycle()
        if cycle:
            first = self.tasks[cycle[0]]
            implied = [n for n in dict.fromkeys(cycle) if self.tasks[n].needs_implied]
            hint = (
                f" ({', '.join(repr(n) for n in implied)} has no 'needs', so it waits for the task"
                " above it; write 'needs: []' to start it at once)"
                if implied
                else ""
            )
            self.checker.fail(f"needs cycle: {' -> '.join(cycle)}{hint}", first.at("needs"))
            return
        for task in self.tasks.values():
            before = self.ancestors(task.name)
            for used in task.uses_results:
                if used == task.name:
                    problem = f"task {task.name!r} uses its own results (results.{used})"
                elif used not in self.tasks:
                    problem = f"task {task.name!r} uses results.{used}, but there is no task {used!r}{suggest(used, self.order)}"
                elif used not in before:
                    problem = f"task {task.name!r} uses results.{used} but does not need {used!r} (add it to 'needs')"
                else:
                    continue
                self.checker.fail(problem, self.checker.results_at[task.name][used])

    def _need_at(self, task: Task, index: int) -> SourceLocation:
        places = self.checker.needs_at.get(task.name, [])
        return places[index] if index < len(places) else task.at("needs")

    def find_cycle(self) -> list[str] | None:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(name: str) -> list[str] | None:
            state[name] = 1
            path.append(name)
            for need in self.tasks[name].needs:
                if state.get(need) == 1:
                    return [*path[path.index(need) :], need]
                if need not in state:
                    found = visit(need)
                    if found:
                        return found
            path.pop()
            state[name] = 2
            return None

        for name in self.order:
            if name not in state:
                found = visit(name)
                if found:
                    return found
        return None

    def ancestors(self, name: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.tasks[name].needs)
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo.extend(self.tasks[need].needs)
        return found
