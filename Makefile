# The two commands of the README, and their helpers. Everything else is CMake.
BUILD ?= build
SANITIZE_BUILD ?= build-sanitize
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build demo test test-sanitize bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/bin/moert demo

test: build
	cd $(BUILD) && ctest --output-on-failure

# The unit, kernel, CLI and MPI tests under AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: deps
	cmake -S . -B $(SANITIZE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOERT_ASAN=ON -DMOERT_UBSAN=ON
	cmake --build $(SANITIZE_BUILD) -j $(JOBS)
	cd $(SANITIZE_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 ctest --output-on-failure -L 'unit|kernels|cli'
	# Open MPI keeps allocations past MPI_Finalize: leaks are not checked under MPI.
	cd $(SANITIZE_BUILD) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 ctest --output-on-failure -L mpi

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD)
