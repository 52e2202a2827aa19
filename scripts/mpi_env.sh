# Sourced by the scripts: lets mpirun start as root (CI containers) and start more ranks
# than there are cores (4 ranks on a 2-core machine).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
